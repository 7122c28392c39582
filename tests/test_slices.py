"""The slices of a RunConfig the parts take: each built in one place, frozen, picklable, keyless."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from mpinfer.api.endpoints import Endpoint
from mpinfer.config import RequestSettings, RunConfig, Transport
from mpinfer.slices import RetryPolicy, RunnerSettings

SECRET = "sk-test-secret-do-not-print-5d1e8b"
OTHER = "sk-test-other-do-not-print-0c4a2f"


def test_a_runners_settings_cross_to_a_worker_by_pickle_and_never_show_a_key() -> None:
    # Given a run with a key, several models and an endpoint of its own
    config = RunConfig(model="m1,m2", api_keys=(SECRET, OTHER), rpm=600,
                       endpoint_table=(Endpoint("m1", SECRET), Endpoint("*", OTHER)))
    # When its runner's settings are built and sent as a worker receives them
    settings = RunnerSettings.of(config)
    received = pickle.loads(pickle.dumps(settings))
    # Then they arrive whole, and frozen
    assert received == settings
    assert received.keys == (SECRET, OTHER)
    assert [endpoint.api_key for endpoint in received.endpoints] == [SECRET, OTHER]
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.timeout = 1.0
    # And no key shows when they are logged
    assert SECRET not in repr(settings) and OTHER not in repr(settings)


def test_a_runner_without_a_table_sends_every_key_to_the_base_url() -> None:
    # Given a run with two keys and no endpoints table
    config = RunConfig(base_url="http://127.0.0.1:9", api_keys=(SECRET, OTHER))
    # When its runner's settings are built
    settings = RunnerSettings.of(config)
    # Then each key is one endpoint at --base-url, and failures do not name endpoints
    assert [(ep.api_key, ep.base_url) for ep in settings.endpoints] == [
        (SECRET, "http://127.0.0.1:9"), (OTHER, "http://127.0.0.1:9")]
    assert not settings.named


def test_a_worker_builds_ahead_as_many_again_on_aiohttp_and_none_on_httpx() -> None:
    # Given -c 8 on each transport
    keys = (SECRET,)
    aiohttp = RunnerSettings.of(RunConfig(api_keys=keys, concurrency=8))
    httpx = RunnerSettings.of(RunConfig(api_keys=keys, concurrency=8, transport=Transport.HTTPX))
    # Then the aiohttp worker builds 8 ahead, the httpx one none
    assert (aiohttp.built_ahead, httpx.built_ahead) == (8, 0)


def test_the_retry_policy_is_the_runs_retry_settings() -> None:
    # Given a run's retry settings
    config = RunConfig(max_retries=5, retry_backoff=0.25, patience=42.0)
    # When its policy is built, Then it holds them, and the runner's settings hold the same
    assert RetryPolicy.of(config) == RetryPolicy(max_retries=5, backoff_s=0.25, patience_s=42.0)
    assert RunnerSettings.of(dataclasses.replace(config, api_keys=(SECRET,))).retry == \
        RetryPolicy.of(config)


def test_a_models_image_limit_is_the_smallest_of_the_flag_and_its_endpoints() -> None:
    # Given two models, the first served by an endpoint with a 20 MB limit, under --max-image-mb 50
    config = RunConfig(model="m1,m2", max_image_mb=50.0, api_keys=(SECRET, OTHER),
                       endpoint_table=(Endpoint("m1", SECRET, max_image_mb=20.0),
                                       Endpoint("m2", OTHER)))
    # When the request settings are built
    # Then m1's requests carry at most 20 MB, m2's at most 50
    assert RequestSettings.of(config).max_image_mb == (20.0, 50.0)


def test_a_batch_body_keeps_its_own_model_unless_the_user_named_one() -> None:
    # Given a run that left --model alone, one that set it, and one with two models
    default = RequestSettings.of(RunConfig())
    named = RequestSettings.of(RunConfig(explicit=frozenset({"model"})))
    several = RequestSettings.of(RunConfig(model="m1,m2"))
    # Then only the first leaves a body's model as it is
    assert (default.chosen, named.chosen, several.chosen) == (False, True, True)
