"""judgekit.client: reading Retry-After and the backoff bound, without a server."""

import email.utils
import time

import pytest


from judgekit import client


class TestRetryAfterSeconds:
    def test_seconds_and_milliseconds(self):
        assert client.retry_after_seconds({"retry-after": "0.25"}) == 0.25
        assert client.retry_after_seconds({"retry-after-ms": "150", "retry-after": "9"}) == 0.15

    def test_http_date(self):
        later = email.utils.formatdate(time.time() + 30, usegmt=True)
        assert 25 < client.retry_after_seconds({"retry-after": later}) <= 30

    @pytest.mark.parametrize("headers", [None, {}, {"retry-after": "soon"}])
    def test_absent_or_unreadable(self, headers):
        assert client.retry_after_seconds(headers) is None


def test_backoff_doubles_within_its_cap():
    policy = client.RetryPolicy(backoff_base=0.1, backoff_max=0.3)
    assert 0.05 <= policy.backoff(0) <= 0.1
    assert 0.1 <= policy.backoff(1) <= 0.2
    assert 0.15 <= policy.backoff(5) <= 0.3
