"""Simulcast end to end: real headless Chromium publishers and subscribers, real
bandwidth limits (``tc`` on loopback, by the subscriber's UDP port).

The demo page publishes the fake camera (1280x720) as three layers, rids q/h/f at
320x180, 640x360 and 1280x720. What a user sees is read from the subscriber's
``getStats()`` (inbound-rtp ``frameHeight``, ``framesDecoded``, ``freezeCount``,
``totalFreezesDuration``, ``packetsLost``) and from the page: the ``layer_changed``
events its client received (``window.sfuLayerEvents``) and the layer label on the tile.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from playwright.async_api import expect

from loadtest.bench_simulcast import VIDEO_STATS_JS
from tests.browser.pages import JOIN_TIMEOUT_MS, join
from tests.browser.pages import new_room as _new_room
from tests.integration.shaping import shaped_port

if TYPE_CHECKING:
    from conftest import BrowserPage, OpenPage

pytestmark = pytest.mark.browser

TOP_LAYER_TIMEOUT_S = 30.0  # from joining until the unshaped subscriber decodes 720p
DROP_TIMEOUT_S = 8.0  # from shaping until the lowest layer is decoded ("a few seconds")
STEADY_WINDOW_S = 10.0  # decoding on the lowest layer under the limit
RECOVERY_TIMEOUT_S = 30.0  # from lifting the limit until the top layer is decoded
LAYER_LOST_TIMEOUT_S = 1.5  # publisher stops its top layer -> next layer ("within a second")

SHAPED_RATE_KBIT = 350
SHAPED_QUEUE_PACKETS = 20  # ~0.5 s of 1,100-byte packets at 350 kbit/s

TOP_MIN_HEIGHT = 540  # the top layer (1280x720) decodes at least this tall
LOW_MAX_HEIGHT = 200  # the lowest layer (320x180) decodes at most this tall
MAX_FREEZE_S = 0.3  # on the lower layer under the limit (the switch itself is measured by bench_simulcast)
MAX_LOSS = 0.02


# What the publisher sends, per rid (for failure messages).
OUTBOUND_JS = """
async () => [...(await window.sfuPc.getStats()).values()]
  .filter((s) => s.type === 'outbound-rtp' && s.kind === 'video')
  .map((s) => ({rid: s.rid ?? null, active: s.active, frameHeight: s.frameHeight ?? null,
                packetsSent: s.packetsSent, limitation: s.qualityLimitationReason}))
"""

LAYER_EVENTS_JS = "() => window.sfuLayerEvents"


def new_room() -> str:
    return _new_room("s")


async def video_stats(page: BrowserPage, publisher_id: str) -> dict:
    return await page.page.evaluate(VIDEO_STATS_JS, publisher_id)


async def layer_events(page: BrowserPage) -> list[dict]:
    return await page.page.evaluate(LAYER_EVENTS_JS)


async def wait_stats(page: BrowserPage, publisher_id: str, predicate, timeout: float, what: str,
                     publisher: BrowserPage | None = None) -> tuple[dict, float]:
    """Poll `page`'s inbound video from `publisher_id` every 0.1 s until
    `predicate(stats)` holds; return the stats and the seconds it took. Fails after
    `timeout` seconds with the last stats, the page's layer events and console, and
    what `publisher` sends."""
    start = time.monotonic()
    while True:
        stats = await video_stats(page, publisher_id)
        if predicate(stats):
            return stats, time.monotonic() - start
        if time.monotonic() - start > timeout:
            sending = await publisher.page.evaluate(OUTBOUND_JS) if publisher else None
            pytest.fail(
                f"{page.label}: not {what} after {timeout} s: {stats}\n"
                f"layer events: {await layer_events(page)}\npublisher sends: {sending}\n{page.log()}"
            )
        await asyncio.sleep(0.1)


async def wait_layer_event(page: BrowserPage, predicate_js: str, timeout: float, what: str) -> dict:
    """Wait until one of the page's `layerchanged` events satisfies `predicate_js` (a
    JS function of the event detail); return that event."""
    try:
        handle = await page.page.wait_for_function(
            f"() => window.sfuLayerEvents.find({predicate_js})", timeout=timeout * 1000, polling=50
        )
    except PlaywrightTimeoutError as error:
        pytest.fail(f"{page.label}: no layer_changed {what} within {timeout} s ({error!r}): "
                    f"{await layer_events(page)}\n{page.log()}")
    return await handle.json_value()


async def watch_decoding(page: BrowserPage, publisher_id: str, duration: float, until=None) -> dict:
    """Poll the inbound video every 0.1 s for `duration` seconds, or until
    `until(stats)` holds on a poll in which frames were decoded. Returns the stats at
    both ends, `took` (seconds until `until` held, None if it never did), the longest
    time framesDecoded stood still (`maxStall`, seconds, seen from outside), and the
    longest single freeze Chrome reported (`maxFreeze`: for each poll interval in which
    freezes ended, their total duration; an upper bound of each freeze's length)."""
    first = last = await video_stats(page, publisher_id)
    stalled_since = first["at"]
    max_stall = max_freeze = 0.0
    took = None
    start = time.monotonic()
    while time.monotonic() - start < duration:
        await asyncio.sleep(0.1)
        stats = await video_stats(page, publisher_id)
        if stats["framesDecoded"] > last["framesDecoded"]:
            stalled_since = stats["at"]
        max_stall = max(max_stall, (stats["at"] - stalled_since) / 1000)
        if stats["freezeCount"] > last["freezeCount"]:
            max_freeze = max(max_freeze, stats["totalFreezesDuration"] - last["totalFreezesDuration"])
        decoding = stats["framesDecoded"] > last["framesDecoded"]
        last = stats
        if until is not None and decoding and until(stats):
            took = time.monotonic() - start
            break
    return {"first": first, "last": last, "took": took, "maxStall": max_stall, "maxFreeze": max_freeze}


def delta(window: dict, key: str) -> float:
    return window["last"][key] - window["first"][key]


async def test_each_subscriber_gets_the_layer_its_downlink_carries(
    sfu_server: str, open_page: OpenPage, tc_available: None
) -> None:
    """One publisher with three layers, two subscribers. The unshaped one decodes the
    top layer throughout. The one shaped to 350 kbit/s drops to the lowest layer
    within a few seconds (told with reason `bandwidth`), then decodes it without
    freezes over 500 ms and with under 2 % loss; once the limit is lifted it climbs
    back to the top layer."""
    room = new_room()
    publisher, publisher_id = await join(open_page, sfu_server, room, "Pub")
    (wide, _), (narrow, _) = await asyncio.gather(
        join(open_page, sfu_server, room, "Wide", publish="0", maxHeight="none"),
        join(open_page, sfu_server, room, "Narrow", publish="0", maxHeight="none"),
    )

    # The track announcement lists the layers, lowest first.
    layers = await narrow.page.evaluate(
        "(pid) => [...window.sfuClient.participants.get(pid).tracks.values()].find((t) => t.kind === 'video').layers",
        publisher_id,
    )
    assert layers == ["q", "h", "f"], layers

    def top(s: dict) -> bool:
        return s["frameHeight"] >= TOP_MIN_HEIGHT and s["framesDecoded"] > 0

    (_, t_wide), (before, _) = await asyncio.gather(
        wait_stats(wide, publisher_id, top, TOP_LAYER_TIMEOUT_S, "decoding the top layer", publisher),
        wait_stats(narrow, publisher_id, top, TOP_LAYER_TIMEOUT_S, "decoding the top layer", publisher),
    )
    video_events = [e for e in await layer_events(narrow) if e["rid"] is not None or e["paused"]]
    assert video_events and video_events[-1]["rid"] == "f", video_events
    port = before["localPort"]
    assert port, f"no selected candidate pair on {narrow.label}: {before}"
    # Every local UDP candidate of the page: Chromium may move its media to another pair.
    ports = await narrow.page.evaluate("""async () => [...(await window.sfuPc.getStats()).values()]
        .filter((s) => s.type === 'local-candidate' && s.protocol === 'udp').map((s) => s.port)""")
    ports = sorted(set(ports) | {port})

    # Everything is measured first and checked at the end, so that a failure reports
    # every figure of the run.
    problems: list[str] = []
    wide_events_before = len(await layer_events(wide))
    with shaped_port(ports, SHAPED_RATE_KBIT, SHAPED_QUEUE_PACKETS):
        shaped_at = await narrow.page.evaluate("() => performance.now()")
        switch = await watch_decoding(narrow, publisher_id, DROP_TIMEOUT_S,
                                      until=lambda s: 0 < s["frameHeight"] <= LOW_MAX_HEIGHT)
        window = await watch_decoding(narrow, publisher_id, STEADY_WINDOW_S)
    lifted_at = await narrow.page.evaluate("() => performance.now()")
    recovery = await watch_decoding(narrow, publisher_id, RECOVERY_TIMEOUT_S, until=top)
    events = await layer_events(narrow)
    down = [e for e in events if shaped_at <= e["receivedAt"] < lifted_at]
    up = [e for e in events if e["receivedAt"] >= lifted_at]

    received, lost = delta(window, "packetsReceived"), delta(window, "packetsLost")
    loss = lost / max(1, received + lost)

    def fmt(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.2f} s"

    summary = (
        f"limit {SHAPED_RATE_KBIT} kbit/s: lowest layer decoded after {fmt(switch['took'])} "
        f"(longest freeze meanwhile <= {switch['maxFreeze']:.3f} s, stall {switch['maxStall']:.3f} s); then over "
        f"{STEADY_WINDOW_S:.0f} s: {delta(window, 'framesDecoded')} frames at {window['last']['frameHeight']} px, "
        f"{delta(window, 'freezeCount')} freezes ({delta(window, 'totalFreezesDuration'):.3f} s, longest "
        f"<= {window['maxFreeze']:.3f} s), longest stall {window['maxStall']:.3f} s, {lost}/{received + lost} "
        f"packets lost ({loss:.2%}), NACKs {delta(window, 'nackCount')}, PLIs {delta(window, 'pliCount')}; "
        f"limit lifted: top layer after {fmt(recovery['took'])} (longest freeze <= {recovery['maxFreeze']:.3f} s)\n"
        f"layer events while limited (ms since limited): "
        f"{[(round(e['receivedAt'] - shaped_at), e['rid'], e['paused'], e['reason']) for e in down]}\n"
        f"after lifting (ms since lifted): "
        f"{[(round(e['receivedAt'] - lifted_at), e['rid'], e['paused'], e['reason']) for e in up]}\n"
        f"window stats {window['first']} -> {window['last']}"
    )
    print(summary)

    if switch["took"] is None:
        problems.append(f"not on the lowest layer within {DROP_TIMEOUT_S} s")
    if not any(e["rid"] == "q" and not e["paused"] and e["reason"] == "bandwidth" for e in down):
        problems.append("no layer_changed to q with reason bandwidth")
    if any(e["paused"] for e in down):
        problems.append(f"paused although {SHAPED_RATE_KBIT} kbit/s carries the lowest layer")
    if window["last"]["frameHeight"] > LOW_MAX_HEIGHT:
        problems.append("not on the lowest layer at the end of the window")
    if delta(window, "framesDecoded") < 8 * STEADY_WINDOW_S:
        problems.append("too few frames decoded on the lowest layer")
    if window["maxFreeze"] > MAX_FREEZE_S:
        problems.append(f"a freeze over {MAX_FREEZE_S} s on the lowest layer")
    if window["maxStall"] > MAX_FREEZE_S:
        problems.append(f"decoding stood still over {MAX_FREEZE_S} s on the lowest layer")
    if loss >= MAX_LOSS:
        problems.append(f"loss {loss:.2%} on the lowest layer")
    if recovery["took"] is None:
        problems.append(f"not back on the top layer within {RECOVERY_TIMEOUT_S} s of lifting the limit")
    elif not up or up[-1]["rid"] != "f":
        problems.append("no layer_changed back to f")
    assert not problems, "; ".join(problems) + "\n" + summary
    print(f"wide on top after {t_wide:.1f} s")

    # The other subscriber was not affected by the shaping: still on the top layer,
    # no layer change since (before it, it may have started on a lower layer while the
    # publisher's higher layers were still ramping up).
    wide_now = await video_stats(wide, publisher_id)
    assert wide_now["frameHeight"] >= TOP_MIN_HEIGHT, wide_now
    wide_events = await layer_events(wide)
    assert wide_events[wide_events_before:] == [], f"the unshaped subscriber changed layer: {wide_events}"


async def test_preferences_pause_and_lost_publisher_layer(sfu_server: str, open_page: OpenPage) -> None:
    """Subscriber preferences and what the tiles show. A subscriber capped at 360 px
    gets the middle layer (reason `preference`, shown on its tile); hiding the video
    pauses it and showing it resumes it. A page without a fixed cap sends its tile's
    height in device pixels and gets no taller layer; when the tile gets taller (a
    wider column) it sends the new height and climbs. When the publisher
    stops its top layer, an uncapped subscriber falls back to the middle one within a
    second (reason `publisher_layer_lost`)."""
    room = new_room()
    publisher, publisher_id = await join(open_page, sfu_server, room, "Pub")
    (mid, _), (tiled, _), (full, _) = await asyncio.gather(
        join(open_page, sfu_server, room, "Mid", publish="0", maxHeight="360"),
        join(open_page, sfu_server, room, "Tiled", publish="0"),
        join(open_page, sfu_server, room, "Full", publish="0", maxHeight="none"),
    )

    # maxHeight=360: the middle layer, 640x360, and the tile says so. (A busy
    # publisher may stall a layer for a moment: the reason of the latest change can
    # then be publisher_layer_lost; the cap must have given h for its own reason.)
    await wait_stats(mid, publisher_id, lambda s: s["frameHeight"] == 360, TOP_LAYER_TIMEOUT_S,
                     "decoding the middle layer (360 px)", publisher)
    event = await wait_layer_event(mid, "(e) => e.rid === 'h' && e.reason === 'preference'", 10.0, "to h for the cap")
    assert not event["paused"], event
    label = mid.page.locator(f'[data-participant-id="{publisher_id}"] [data-layer]')
    await expect(label).to_be_visible()
    await expect(label).to_have_attribute("data-layer", "h")
    await expect(label).to_have_attribute("data-reason", re.compile("^(preference|publisher_layer_lost)$"))
    await expect(label).to_contain_text("h")
    await expect(label).to_contain_text(re.compile("preference|publisher_layer_lost"))
    if event["width"] and event["height"]:
        await expect(label).to_contain_text(f"{event['width']}x{event['height']}")
        assert (event["width"], event["height"]) == (640, 360), event

    # "Hide video" pauses the track (nothing decoded, the tile says "paused"); "Show
    # video" resumes it on the middle layer.
    hide = mid.page.locator(f'[data-participant-id="{publisher_id}"] .hide-video')
    await hide.click()
    await wait_layer_event(mid, "(e) => e.paused && e.reason === 'paused'", 5.0, "paused")
    await expect(label).to_have_attribute("data-layer", "paused")
    await expect(label).to_contain_text("paused")
    await asyncio.sleep(0.5)  # frames already in flight
    paused_window = await watch_decoding(mid, publisher_id, 1.5)
    assert delta(paused_window, "framesDecoded") <= 1, f"decoding while paused: {paused_window}"
    resume_from = await mid.page.evaluate("() => window.sfuLayerEvents.length")
    await hide.click()
    await wait_stats(mid, publisher_id, lambda s: s["framesDecoded"] > paused_window["last"]["framesDecoded"] + 10,
                     10.0, "decoding again after resuming", publisher)
    resumed = (await layer_events(mid))[resume_from:]
    assert resumed and resumed[-1]["rid"] == "h" and not resumed[-1]["paused"], resumed
    assert (await video_stats(mid, publisher_id))["frameHeight"] == 360

    # The default page sends the tile's size in device pixels, and gets the smallest
    # layer that covers it (the largest when none does): never an upscaled picture.
    sent = await tiled.page.wait_for_function(
        "() => window.sfuSettingsSent.length && window.sfuSettingsSent", timeout=JOIN_TIMEOUT_MS
    )
    sent = await sent.json_value()
    tile_size_js = (
        "(pid) => { const box = document.querySelector(`[data-participant-id='${pid}'] video`).getBoundingClientRect();"
        " return {maxWidth: Math.round(box.width * devicePixelRatio), maxHeight: Math.round(box.height * devicePixelRatio)}; }"
    )
    tile_size = await tiled.page.evaluate(tile_size_js, publisher_id)
    assert sent[-1]["settings"] == tile_size, (sent, tile_size)
    layers = ((320, 180, "q"), (640, 360, "h"), (1280, 720, "f"))
    _, expected_height, expected_rid = next(
        ((w, h, r) for w, h, r in layers if w >= tile_size["maxWidth"] and h >= tile_size["maxHeight"]), layers[-1]
    )
    await wait_stats(tiled, publisher_id, lambda s: s["frameHeight"] == expected_height, TOP_LAYER_TIMEOUT_S,
                     f"decoding {expected_height} px for a {tile_size} tile", publisher)
    tiled_label = tiled.page.locator(f'[data-participant-id="{publisher_id}"] [data-layer]')
    await expect(tiled_label).to_have_attribute("data-layer", expected_rid)

    # The tile grows (one 1000 px wide column: 750 px tall): the page sends the new
    # size once (debounced) and the server forwards the layer that covers it.
    await tiled.page.evaluate("() => { document.querySelector('#tiles').style.gridTemplateColumns = '1000px'; }")
    await tiled.page.wait_for_function(f"() => window.sfuSettingsSent.length > {len(sent)}", timeout=5_000)
    await asyncio.sleep(1.0)  # a second report would come within the debounce
    resent = (await tiled.page.evaluate("() => window.sfuSettingsSent"))[len(sent):]
    new_size = await tiled.page.evaluate(tile_size_js, publisher_id)
    assert new_size["maxHeight"] > 360, new_size
    assert [r["settings"] for r in resent] == [new_size], (resent, new_size)
    await wait_stats(tiled, publisher_id, lambda s: s["frameHeight"] == 720, TOP_LAYER_TIMEOUT_S,
                     f"decoding 720 px for a {new_size} tile", publisher)
    await expect(tiled_label).to_have_attribute("data-layer", "f")

    # The publisher stops sending its top layer: the uncapped subscriber falls back to
    # the middle one within a second, and is told why.
    await wait_stats(full, publisher_id, lambda s: s["frameHeight"] >= TOP_MIN_HEIGHT, TOP_LAYER_TIMEOUT_S,
                     "decoding the top layer", publisher)
    stopped_at = await full.page.evaluate("() => performance.now()")
    await publisher.page.evaluate(
        """async () => {
          const sender = [...window.sfuClient.localTracks.values()].find((t) => t.track.kind === 'video').transceiver.sender;
          const params = sender.getParameters();
          params.encodings.find((e) => e.rid === 'f').active = false;
          await sender.setParameters(params);
        }"""
    )
    fallback = await wait_layer_event(
        full, f"(e) => e.receivedAt >= {stopped_at} && e.rid === 'h'", LAYER_LOST_TIMEOUT_S + 5, "to h"
    )
    took = (fallback["receivedAt"] - stopped_at) / 1000
    assert fallback["reason"] == "publisher_layer_lost", fallback
    await wait_stats(full, publisher_id, lambda s: s["frameHeight"] == 360, 5.0,
                     "decoding the middle layer after the top one stopped", publisher)
    assert took <= LAYER_LOST_TIMEOUT_S, f"fallback to h took {took:.2f} s: {fallback}"
    print(f"fallback after the publisher's top layer stopped: {took:.2f} s")
    # The capped subscriber was on the middle layer all along: not affected.
    assert (await video_stats(mid, publisher_id))["frameHeight"] == 360


async def test_single_encoding_publisher(sfu_server: str, open_page: OpenPage) -> None:
    """A publisher without simulcast (`simulcast=0`, one 640x480 encoding) still
    reaches subscribers, even one whose cap is below its only layer: the track lists
    no layers, and it is never paused (PROTOCOL.md: single-encoding video is always
    forwarded)."""
    room = new_room()
    publisher, publisher_id = await join(open_page, sfu_server, room, "Single", simulcast="0")
    viewer, _ = await join(open_page, sfu_server, room, "Viewer", publish="0", maxHeight="240")

    track = await viewer.page.evaluate(
        "(pid) => [...window.sfuClient.participants.get(pid).tracks.values()].find((t) => t.kind === 'video')",
        publisher_id,
    )
    assert not track.get("layers"), track
    sending = await publisher.page.evaluate(OUTBOUND_JS)
    assert len(sending) == 1 and sending[0]["rid"] is None, sending

    first, _ = await wait_stats(viewer, publisher_id, lambda s: s["frameHeight"] == 480 and s["framesDecoded"] > 0,
                                TOP_LAYER_TIMEOUT_S, "decoding the single 640x480 encoding", publisher)
    await asyncio.sleep(1.0)
    second = await video_stats(viewer, publisher_id)
    assert second["framesDecoded"] - first["framesDecoded"] >= 10, (first, second)
    events = [e for e in await layer_events(viewer) if e["trackId"] == track["id"]]
    assert all(e["rid"] is None and not e["paused"] for e in events), events
    # The page asked for the cap (the server ignores it for a single encoding).
    sent = await viewer.page.evaluate("() => window.sfuSettingsSent")
    assert {"trackId": track["id"], "maxHeight": 240} in [{"trackId": r["trackId"], **r["settings"]} for r in sent], sent


# Publish a camera track from the page's client with the given encodings; with
# `codec` (a mimeType), offer only that video codec. Returns {id} or {error, code}.
PUBLISH_JS = """
async ({encodings, codec}) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}});
  const pc = window.sfuPc;
  const addTransceiver = pc.addTransceiver;
  if (codec) {
    pc.addTransceiver = (track, init) => {
      const transceiver = addTransceiver.call(pc, track, init);
      transceiver.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs.filter((c) => c.mimeType === codec));
      return transceiver;
    };
  }
  try {
    return {id: await window.sfuClient.publishTrack(stream.getVideoTracks()[0], {stream, sendEncodings: encodings})};
  } catch (error) {
    return {error: error.message, code: error.code ?? null};
  } finally {
    pc.addTransceiver = addTransceiver;
  }
}
"""


async def test_offers_beyond_what_the_server_forwards(sfu_server: str, open_page: OpenPage) -> None:
    """A publisher offering four layers with RIDs the demo does not use gets the first
    three accepted (the track lists them, Chrome sends three) and is received; a video
    track offered only as AV1 is refused with the reason while the rest of the room,
    and the same publisher's next offer, go on."""
    room = new_room()
    # Odd is alone in the room when it publishes: its offer is its first with media.
    odd, odd_id = await join(open_page, sfu_server, room, "Odd", publish="0")
    four = [{"rid": rid, "scaleResolutionDownBy": scale} for rid, scale in (("a", 8), ("b", 4), ("c", 2), ("d", 1))]
    published = await odd.page.evaluate(PUBLISH_JS, {"encodings": four, "codec": None})
    assert "id" in published, published
    regular, regular_id = await join(open_page, sfu_server, room, "Regular")
    viewer, _ = await join(open_page, sfu_server, room, "Viewer", publish="0", maxHeight="none")
    answer = await odd.page.evaluate("() => window.sfuPc.currentRemoteDescription.sdp")
    assert "a=simulcast:recv a;b;c\r\n" in answer, answer
    await viewer.page.wait_for_function(
        "([pid, tid]) => window.sfuClient.participants.get(pid)?.tracks.get(tid)", arg=[odd_id, published["id"]],
        timeout=JOIN_TIMEOUT_MS,
    )
    track = await viewer.page.evaluate(
        "([pid, tid]) => window.sfuClient.participants.get(pid).tracks.get(tid)", [odd_id, published["id"]]
    )
    assert track["layers"] == ["a", "b", "c"], track
    await wait_stats(viewer, odd_id, lambda s: s["frameHeight"] > 0 and s["framesDecoded"] > 10, TOP_LAYER_TIMEOUT_S,
                     "decoding the four-layer publisher", odd)
    sending = [s for s in await odd.page.evaluate(OUTBOUND_JS) if s["packetsSent"]]
    assert {s["rid"] for s in sending} <= {"a", "b", "c"}, sending

    refused = await odd.page.evaluate(PUBLISH_JS, {"encodings": None, "codec": "video/AV1"})
    assert refused.get("code") == "rejected" and "codec" in refused["error"], refused

    # Nothing else broke: the next offer of the same client (a microphone) goes
    # through, and the viewer still decodes both publishers.
    mic = await odd.page.evaluate(
        """async () => { const s = await navigator.mediaDevices.getUserMedia({audio: true});
                         return window.sfuClient.publishTrack(s.getAudioTracks()[0], {stream: s}); }"""
    )
    assert mic.startswith("TR_"), mic
    for publisher_id, page in ((odd_id, odd), (regular_id, regular)):
        before = await video_stats(viewer, publisher_id)
        await wait_stats(viewer, publisher_id, lambda s, b=before: s["framesDecoded"] >= b["framesDecoded"] + 10, 10.0,
                         "still decoding", page)
    audio = await viewer.page.wait_for_function(
        """(pid) => { const p = window.sfuClient.participants.get(pid);
                      return p && p.stream.getAudioTracks().length > 0; }""", arg=odd_id, timeout=JOIN_TIMEOUT_MS,
    )
    assert await audio.json_value()


async def test_viewer_starts_publishing_simulcast_later(sfu_server: str, open_page: OpenPage) -> None:
    """A participant that joined as a viewer (its video m-lines so far only receive)
    turns its camera on later, with three layers: the offer goes through and the
    others receive it. (Chrome re-offers only the header extensions an earlier answer
    accepted, and refuses simulcast without the RID extension.)"""
    room = new_room()
    publisher, publisher_id = await join(open_page, sfu_server, room, "Pub")
    late, late_id = await join(open_page, sfu_server, room, "Late", publish="0", maxHeight="none")
    await wait_stats(late, publisher_id, lambda s: s["framesDecoded"] > 0, TOP_LAYER_TIMEOUT_S, "decoding", publisher)

    encodings = [{"rid": rid, "scaleResolutionDownBy": scale} for rid, scale in (("q", 4), ("h", 2), ("f", 1))]
    published = await late.page.evaluate(PUBLISH_JS, {"encodings": encodings, "codec": None})
    assert "id" in published, published
    await wait_stats(publisher, late_id, lambda s: s["framesDecoded"] > 10, TOP_LAYER_TIMEOUT_S,
                     "decoding the late publisher", late)
