"""`GET /ui`, the live status page: its token (the `/metrics` one, carried by a cookie), and, in a real headless
Chromium driven through Playwright, its numbers against `/v1/usage` and `/metrics` while a batch is in flight."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.metrics import metric
from tests.helpers.servers import FAST, ROOT, RouterFactory, Sim
from tests.helpers.waiting import wait_until

TOKEN = "ui-token-for-tests"
QUEUE = "openai/gpt-4o-mini/chat/completions"
LEVERS = ("batch", "flex", "route", "prompt_cache", "answer_cache")
SCREENSHOT = ROOT / "docs" / "status-page.png"


def chromium() -> str:
    """The system's Chromium; missing, a failure in CI (REQUIRE_CHROMIUM=1) and a skip elsewhere."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        pytest.fail("REQUIRE_CHROMIUM=1 but there is no chromium binary (apt-get install chromium)")
    pytest.skip("no chromium binary: apt-get install chromium")


def usd(value: float) -> str:
    """The page's way of writing dollars (to the micro-dollar), written here independently of the template's."""
    return f"{'-' if value < 0 else ''}${abs(value):,.6f}"


TREE: dict[str, Any] = {
    "batch": FAST,
    "metrics_token_env": "UI_TOKEN",
    "tenants": {"default": {"rpm": 600, "max_deferred": 50, "daily_budget_usd": 5.0}},
}


@pytest.fixture
def ui_router(start_router: RouterFactory) -> Iterator[str]:
    with start_router(environ={"UI_TOKEN": TOKEN}, **TREE) as base:
        yield base


def test_the_page_takes_the_metrics_token_once_and_keeps_it_in_a_cookie(ui_router: str) -> None:
    with httpx.Client(base_url=ui_router) as http:
        refused = http.get("/ui")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/ui", params={"token": "wrong"}).status_code == 401
        assert http.get("/ui", headers={"Authorization": "Bearer " + TOKEN}).status_code == 200

        entry = http.get("/ui", params={"token": TOKEN})  # sets the cookie, then drops the token from the address
        assert entry.status_code == 303
        assert entry.headers["location"] == "/ui"
        assert "httponly" in entry.headers["set-cookie"].lower()
        page = http.get("/ui")  # the cookie alone now
        assert page.status_code == 200
        assert page.text.startswith("<!doctype html>")
        assert 'src="/ui/static/htmx.min.js"' in page.text
        panels = http.get("/ui", headers={"HX-Request": "true"})  # htmx's refresh: the panels only
        assert panels.status_code == 200
        assert "<html" not in panels.text
        assert 'data-field="held"' in panels.text

        script = http.get("/ui/static/htmx.min.js")  # vendored in the package, no CDN
        assert script.status_code == 200
        assert b"htmx" in script.content[:200]


def _hold_one_call(base: str, deadline: str) -> tuple[threading.Thread, list[BaseException]]:
    """A held deferred call in a thread; it ends when the router cuts it at shutdown."""
    errors: list[BaseException] = []

    def run() -> None:
        client = openai.OpenAI(base_url=base + "/v1", api_key="dev", max_retries=0, timeout=600)
        try:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "the held one"}],
                extra_headers={"X-Deadline": deadline},
            )
        except openai.APIConnectionError:
            pass  # the router's shutdown cut the held connection after its 200, as it should
        except openai.APIStatusError as exc:  # or answered a retryable 503 before any status was committed
            if exc.status_code != 503:
                errors.append(exc)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _cell(page: Any, row: str, field: str) -> Any:
    return page.locator(f'{row} [data-field="{field}"]').first


def _value(page: Any, row: str, field: str) -> float:
    return float(_cell(page, row, field).get_attribute("data-value"))


def test_the_page_in_chromium_shows_what_usage_and_metrics_say_while_a_batch_is_in_flight(
    start_router: RouterFactory, sim: Sim, oai: Callable[..., openai.OpenAI], tmp_path: Path
) -> None:
    executable = chromium()
    with start_router(environ={"UI_TOKEN": TOKEN}, **TREE) as base:
        thread, errors = _check_in_chromium(base, executable, sim, oai(base), tmp_path)
    thread.join(30)  # the router's shutdown cut the held call
    assert not thread.is_alive()
    assert not errors, errors


def _check_in_chromium(
    ui_router: str, executable: str, sim: Sim, client: openai.OpenAI, tmp_path: Path
) -> tuple[threading.Thread, list[BaseException]]:
    from playwright.sync_api import sync_playwright  # only where a browser runs

    # One deferred call answered from a batch: savings on the batch lever, and a turnaround observed.
    done = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "the first"}], extra_headers={"X-Deadline": "10m"}
    )
    assert done.headers["x-router-lane"] == "batch"
    # The next batch stays at the provider for two minutes, with its caller held.
    sim.configure(batch_turnaround_s=120.0)
    thread, errors = _hold_one_call(ui_router, "30m")
    auth = {"Authorization": "Bearer " + TOKEN}
    with httpx.Client(base_url=ui_router, headers=auth) as http:

        def settled() -> str | None:
            text = http.get("/metrics").text
            held = metric(text, "hybrid_router_held_connections")
            inflight = metric(text, "hybrid_router_batches_inflight")
            return text if held == 1 and inflight == 1 else None

        wait_until(settled, 30, "the second call held and its batch in flight")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(ui_router + "/ui?token=" + TOKEN)  # the cookie, then /ui
                assert page.url == ui_router + "/ui"
                batch_row = "tr[data-batch]"
                # The batch is recorded as submitted (with the provider's id) by the time htmx refreshes.
                page.wait_for_selector(f'{batch_row} [data-field="state"] >> text=submitted', timeout=30_000)
                first = _value(page, "body", "updated")
                # htmx swaps in fresh panels by itself (the stamp moves on without a reload).
                page.wait_for_function(
                    f"document.querySelector('[data-field=updated]').dataset.value > {first!r}", timeout=30_000
                )
                usage = http.get("/v1/usage").json()
                metrics = http.get("/metrics").text
                page.reload()
                page.wait_for_selector(f'{batch_row} [data-field="state"] >> text=submitted')

                # /metrics: held connections, batches in flight, queue depth, the turnaround model.
                assert _value(page, "body", "held") == metric(metrics, "hybrid_router_held_connections") == 1
                assert _value(page, "body", "batches-total") == metric(metrics, "hybrid_router_batches_inflight") == 1
                assert page.locator(batch_row).count() == 1
                queue = f'tr[data-queue="{QUEUE}"]'
                depth = metric(metrics, f'hybrid_router_queue_depth{{queue="{QUEUE}"}}')
                assert _value(page, queue, "waiting") == depth == 0
                assert _value(page, queue, "in-flight") == 1
                admit = metric(
                    metrics, f'hybrid_router_turnaround_estimate_seconds{{quantile="admit",queue="{QUEUE}"}}'
                )
                median = metric(metrics, f'hybrid_router_turnaround_estimate_seconds{{quantile="0.5",queue="{QUEUE}"}}')
                evidence = metric(metrics, f'hybrid_router_turnaround_evidence_batches{{queue="{QUEUE}"}}')
                assert admit > 0 and evidence > 0
                assert _value(page, queue, "admit") == pytest.approx(admit, rel=1e-3)
                assert _value(page, queue, "median") == pytest.approx(median, rel=1e-3)
                assert _value(page, queue, "evidence") == pytest.approx(evidence, rel=1e-3)
                assert _cell(page, queue, "evidence").inner_text().startswith(f"{evidence:.1f}")
                # The batch: lines, a provider id, an age, and the expected turnaround at the admission quantile.
                assert _value(page, batch_row, "lines") == 1
                assert _cell(page, batch_row, "provider-id").inner_text().startswith("batch_")
                assert _value(page, batch_row, "age") >= 0
                assert _value(page, batch_row, "expected") == pytest.approx(admit, rel=1e-3)

                # /v1/usage: savings by lever (as written on the page) and the tenant's headroom.
                tenant = 'tr[data-tenant="default"]'
                assert usage["savings_by_lever"]["batch"] > 0
                for lever in LEVERS:
                    cell = _cell(page, tenant, f"lever-{lever}")
                    assert cell.inner_text() == usd(usage["savings_by_lever"][lever]), lever
                total = sum(fields.get("savings_usd", 0.0) for fields in usage["lanes"].values())
                assert _cell(page, tenant, "savings").inner_text() == usd(total)
                for limit, values in usage["limits"].items():
                    row = f'tr[data-tenant="default"][data-limit="{limit}"]'
                    assert _value(page, row, "remaining") == pytest.approx(values["remaining"], abs=1e-9), limit
                assert usage["limits"]["max_deferred"]["in_use"] == 1  # the held call

                shot = tmp_path / "status-page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                if os.environ.get("UPDATE_SCREENSHOTS") == "1":
                    shutil.copyfile(shot, SCREENSHOT)
                # A refresh the router refuses (here: the cookie is gone) keeps the numbers and says they are stale.
                assert page.locator("#stale").is_hidden()
                page.context.clear_cookies()
                page.wait_for_selector("#stale", state="visible", timeout=30_000)
                assert _value(page, "body", "held") == 1  # the last numbers stay on the page
            finally:
                browser.close()
    return thread, errors
