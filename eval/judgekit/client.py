"""Chat completions against any OpenAI-compatible server: concurrency, retries, results as they
arrive. The only module that imports ``openai``.

The server and key come from the SDK's own environment variables, OPENAI_BASE_URL and
OPENAI_API_KEY, so the same command judges with GPT-4 or with a local vLLM / llama.cpp server.
The key is never logged or printed: it only travels in the Authorization header.

The SDK's own retries are turned off (``max_retries=0``) so that every retry is ours: bounded
by ``RetryPolicy.max_retries``, honouring the server's Retry-After, and counted.
"""

import asyncio
import dataclasses
import email.utils
import logging
import random
import time

import openai

from .errors import InputError

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx
FATAL_STATUS = {401, 403, 404}  # wrong key, no access, wrong model or base URL: stop the run


@dataclasses.dataclass
class RetryPolicy:
    """How hard to try one request: at most ``max_retries`` retries after the first attempt;
    waits follow the server's Retry-After when given, else ``backoff_base * 2**retry`` seconds
    (with jitter), capped at ``backoff_max``."""

    max_retries: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def backoff(self, retry):
        delay = min(self.backoff_max, self.backoff_base * 2**retry)
        return delay * (0.5 + random.random() / 2)


@dataclasses.dataclass
class ChatJob:
    """One request: its messages and sampling settings, plus whatever the caller needs back."""

    messages: list
    temperature: float
    max_tokens: int
    payload: object = None


@dataclasses.dataclass
class RunSummary:
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestFailed(Exception):
    """A request that did not succeed within its retries (or was refused for good)."""


class MalformedReply(Exception):
    """A 200 reply with nothing to use: a body that is not JSON, no ``choices``, empty content,
    or text the caller cannot read (``ChatJob``'s ``accept`` says so)."""


class FatalAPIError(Exception):
    """The server refuses every request (bad key, unknown model, wrong URL): stop at once."""


def retry_after_seconds(headers):
    """The server's requested wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an
    HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _describe(err):
    """A short, key-free description of an SDK error for logs (ours say what was wrong; the SDK's
    messages may echo the request, so only their status or class is shown)."""
    if isinstance(err, MalformedReply):
        return str(err)
    status = getattr(err, "status_code", None)
    return f"HTTP {status}" if status else type(err).__name__


def reply_text(response):
    """The text of a chat completion; ``MalformedReply`` when the reply has none.

    With a non-JSON body the SDK hands back the body as a string, and with a JSON body missing
    fields it hands back a model whose fields are None: both are checked here, not trusted.
    """
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("a reply that is not JSON" if isinstance(response, str) else "a reply without choices")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("a reply with empty content")
    return text


def describe_job(job):
    """Which request this is, for a log line: the id fields of its payload (never the messages)."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    ids = [f"{key}={value}" for key, value in payload.items() if key.endswith("_id")]
    return " ".join(ids) if ids else "one request"


def classify_error(err):
    """``"retry"``, ``"fatal"`` or ``"fail"`` (give up on this request only)."""
    if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError, MalformedReply)):
        return "retry"
    if isinstance(err, openai.APIStatusError):
        if err.status_code in RETRYABLE_STATUS or err.status_code >= 500:
            return "retry"
        if err.status_code in FATAL_STATUS:
            return "fatal"
    return "fail"


class ChatRunner:
    """Sends ``ChatJob``s to one model with bounded concurrency and our own retries."""

    def __init__(self, model, concurrency=8, retry=None, timeout=120.0):
        if concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        self.model = model
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.summary = RunSummary()

    def _make_client(self):
        try:
            return openai.AsyncOpenAI(max_retries=0, timeout=self.timeout)
        except openai.OpenAIError:
            raise InputError(
                "OPENAI_API_KEY is not set (for a local server without keys, set it to any value)"
            ) from None

    def _count_tokens(self, response):
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.summary.prompt_tokens += usage.prompt_tokens or 0
            self.summary.completion_tokens += usage.completion_tokens or 0

    async def _complete(self, client, job):
        """The reply text of one job, retrying what is worth retrying."""
        for retry in range(self.retry.max_retries + 1):
            self.summary.attempts += 1
            try:
                response = await client.chat.completions.create(
                    model=self.model,
                    messages=job.messages,
                    temperature=job.temperature,
                    max_tokens=job.max_tokens,
                )
                self._count_tokens(response)
                return reply_text(response)
            except (openai.OpenAIError, MalformedReply) as err:
                kind = classify_error(err)
                if kind == "fatal":
                    raise FatalAPIError(f"the server refused the request ({_describe(err)}): check "
                                        "OPENAI_BASE_URL, the model name and the key") from None
                if kind == "fail" or retry == self.retry.max_retries:
                    raise RequestFailed(f"{_describe(err)} at try {retry + 1}") from None
                headers = getattr(getattr(err, "response", None), "headers", None)
                wait = retry_after_seconds(headers)
                wait = self.retry.backoff(retry) if wait is None else wait
                logger.debug("%s; retry %d in %.2fs", _describe(err), retry + 1, wait)
                self.summary.retries += 1
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _run(self, jobs, on_result):
        semaphore = asyncio.Semaphore(self.concurrency)
        client = self._make_client()

        async def attempt(job):
            async with semaphore:
                try:
                    return job, await self._complete(client, job), None
                except RequestFailed as err:
                    return job, None, err

        tasks = [asyncio.create_task(attempt(job)) for job in jobs]
        try:
            for finished in asyncio.as_completed(tasks):
                job, text, error = await finished
                if error is None:
                    self.summary.succeeded += 1
                else:
                    self.summary.failed += 1
                    logger.warning("gave up on %s: %s", describe_job(job), error)
                on_result(job, text, error)  # written before the next result is awaited
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    def run(self, jobs, on_result):
        """Run every job; ``on_result(job, text, error)`` is called as each one finishes.

        Raises ``FatalAPIError`` (after cancelling the rest) when the server refuses outright.
        """
        asyncio.run(self._run(list(jobs), on_result))
        return self.summary


def add_request_arguments(parser):
    """The flags every script that calls the API shares."""
    group = parser.add_argument_group("requests (server and key from OPENAI_BASE_URL / OPENAI_API_KEY)")
    group.add_argument("--concurrency", type=int, default=8, help="parallel requests (default 8)")
    group.add_argument("--max-retries", type=int, default=8, help="retries per request after the first try")
    group.add_argument("--backoff-base", type=float, default=1.0,
                       help="first wait in seconds when the server gives no Retry-After; doubles per retry")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds before one request is retried")


def runner_from_args(args, model):
    """A ``ChatRunner`` configured by ``add_request_arguments``' flags."""
    if args.max_retries < 0:
        raise InputError("--max-retries must be 0 or more")
    retry = RetryPolicy(max_retries=args.max_retries, backoff_base=args.backoff_base)
    return ChatRunner(model, concurrency=args.concurrency, retry=retry, timeout=args.timeout)


def format_summary(summary, seconds):
    """One line for stderr at the end of a run."""
    return (f"{summary.succeeded} done, {summary.failed} failed, {summary.retries} retries, "
            f"{summary.attempts} requests in {seconds:.1f}s; tokens: {summary.prompt_tokens} prompt, "
            f"{summary.completion_tokens} completion")


class LazyAppender:
    """A ``JsonlAppender`` opened at the first row: a run in which nothing succeeds leaves no
    file behind (an empty output file would look like a finished run with nothing to say)."""

    def __init__(self, path):
        self.path = path
        self._writer = None

    def write(self, row):
        from qlorakit.jsonl import JsonlAppender

        if self._writer is None:
            self._writer = JsonlAppender(self.path)
        self._writer.write(row)

    def close(self):
        if self._writer is not None:
            self._writer.close()


def run_jobs_to_file(runner, jobs, path, make_row, desc):
    """Run ``jobs`` and append ``make_row(job, text)`` to ``path`` as each succeeds (flushed and
    fsynced before the next result is taken, so a paid reply is on disk before anything else
    happens); failures are not written, so the next run of the same command asks them again.
    Returns the exit status: 0 when all succeeded, 1 when some failed."""
    from tqdm import tqdm

    started = time.perf_counter()
    writer = LazyAppender(path)
    with tqdm(total=len(jobs), desc=desc) as bar:
        def on_result(job, text, error):
            bar.update(1)
            if error is None:
                writer.write(make_row(job, text))

        try:
            summary = runner.run(jobs, on_result)
        except FatalAPIError as err:
            raise InputError(str(err)) from None
        finally:
            writer.close()
    logger.info(format_summary(summary, time.perf_counter() - started))
    if summary.failed:
        logger.error("%d requests failed; rerun the same command to ask them again", summary.failed)
        return 1
    return 0
