// Demo room page. `/?room=ROOM&name=NAME` joins at once with camera and microphone;
// `&publish=0` joins as a viewer; without `room` the page shows the join form.
// A chat panel sends and shows text over the client's reliable `chat` DataChannel.
//
// Simulcast: the camera is published as three layers (rids q/h/f at 1/4, 1/2 and full
// resolution, asking the camera for 1280x720); `&simulcast=0` publishes one encoding
// (640x480). Each remote tile tells the server its size in device pixels
// (`track_settings` maxWidth/maxHeight, debounced) so the server forwards the smallest
// layer that covers the tile (never an upscaled smaller one while a larger exists),
// and pauses the video while the tile's "Hide video" is on.
// `&maxHeight=N` sends N for every tile instead of its size (tests); `&maxHeight=none`
// sends no cap at all. Each tile shows the layer it receives and why (`[data-layer]`).
//
// For tests and debugging, `window` holds: `sfuClient`, `sfuPc`, `sfuApp` (the page's
// options), `sfuLayerEvents` (every `layerchanged` detail, oldest first) and
// `sfuSettingsSent` (every `setTrackSettings` call: `{at, trackId, settings}`, `at`
// in ms of `performance.now()`).
import { SfuClient } from './sfu-client.js';

const $ = (selector, root = document) => root.querySelector(selector);

/** Label of the DataChannel the chat panel uses (the client opens it at join). */
const CHAT_CHANNEL = 'chat';

/** Camera layers for simulcast, lowest first (PROTOCOL.md, "Simulcast"); bit/s. */
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/** Camera size asked for, in pixels: the top layer's (simulcast) or the only one's. */
const CAMERA_SIZE = { simulcast: { width: 1280, height: 720 }, single: { width: 640, height: 480 } };

/** Wait this long after a tile stops resizing before telling the server, in ms. */
const TILE_SIZE_DEBOUNCE_MS = 300;

const params = new URLSearchParams(location.search);
const room = params.get('room');

/**
 * The page's options from the query string: `simulcast`, publish the camera as three
 * layers; `maxHeight`, a fixed cap for every tile in device pixels (null: send no
 * cap; undefined: send each tile's own height).
 * @type {{simulcast: boolean, maxHeight: number|null|undefined}}
 */
const options = {
  simulcast: params.get('simulcast') !== '0',
  maxHeight: parseMaxHeight(params.get('maxHeight')),
};
window.sfuApp = options;
window.sfuLayerEvents = [];
window.sfuSettingsSent = [];

/**
 * @param {string|null} value The `maxHeight` query parameter.
 * @returns {number|null|undefined} See `options.maxHeight`.
 */
function parseMaxHeight(value) {
  if (value === null || value === '') return undefined;
  if (value === 'none') return null;
  const n = Number(value);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

if (room) {
  enterRoom({
    room,
    name: params.get('name')?.trim() || `Guest-${Math.floor(Math.random() * 9000 + 1000)}`,
    publish: params.get('publish') !== '0',
  });
} else {
  $('#lobby').hidden = false;
}

/**
 * Join `room` and wire the page to the client.
 * @param {{room: string, name: string, publish: boolean}} options
 */
async function enterRoom({ room, name, publish }) {
  $('#room').hidden = false;
  $('#room-title').textContent = `Room ${room}`;
  document.title = `${room} - SFU room`;

  const client = new SfuClient({
    // ?relay=1: reach the server only through the TURN servers it gives (to try TURN).
    rtcConfig: params.get('relay') === '1' ? { iceTransportPolicy: 'relay' } : {},
  });
  window.sfuClient = client;
  window.sfuPc = client.pc;

  client.addEventListener('participantjoined', (e) => {
    addTile(e.detail.participant, client);
    updateBadges(e.detail.participant.id, client);
  });
  client.addEventListener('participantleft', (e) => tileFor(e.detail.participantId)?.remove());
  client.addEventListener('trackpublished', (e) => updateBadges(e.detail.participantId, client));
  client.addEventListener('trackunpublished', (e) => updateBadges(e.detail.participantId, client));
  client.addEventListener('trackmuted', (e) => updateBadges(e.detail.participantId, client));
  client.addEventListener('trackunmuted', (e) => updateBadges(e.detail.participantId, client));
  client.addEventListener('remotetrack', (e) => {
    const tile = tileFor(e.detail.participantId);
    startPlayback(tile);
    if (e.detail.kind === 'video') tile?.reportSize?.();
  });
  client.addEventListener('activespeaker', (e) => {
    for (const tile of document.querySelectorAll('.tile.speaking')) tile.classList.remove('speaking');
    tileFor(e.detail.participantId)?.classList.add('speaking');
  });
  client.addEventListener('layerchanged', (e) => {
    window.sfuLayerEvents.push(e.detail);
    showLayer(client, e.detail.trackId);
  });
  let failed = false; // the server said the media connection failed: keep saying that
  client.addEventListener('error', (e) => {
    if (e.detail.code === 'connection_failed') failed = true;
    setStatus(`Error: ${e.detail.message}`);
  });
  client.addEventListener('removed', (e) => {
    setStatus(`Removed from the room: ${e.detail.message}.`);
    $('#rejoin').hidden = e.detail.reason === 'duplicate_identity';
  });
  client.addEventListener('permissionschanged', (e) => {
    if (e.detail.permissions.canPublish === false) {
      localStream?.getTracks().forEach((t) => t.stop());
      $('#toggle-mic').hidden = $('#toggle-cam').hidden = true;
      setStatus('The application stopped your camera and microphone.');
    }
  });
  client.addEventListener('servershutdown', () => {
    setStatus('The server is shutting down. Rejoin in a moment.');
    $('#rejoin').hidden = false;
  });
  client.addEventListener('closed', (e) => {
    // Before the join completes, the join's own error is the better message; after a
    // shutdown notice, that notice is.
    if (e.detail.reason !== 'left' && client.participantId && !client.serverShutdown && !client.removed && !failed) {
      setStatus(`Disconnected: ${e.detail.reason}`);
    }
    setChatEnabled(false);
  });
  client.addEventListener('reconnecting', () => setStatus('Connection lost. Reconnecting…'));
  client.addEventListener('reconnected', (e) => {
    window.sfuPc = client.pc;
    window.sfuReconnects = (window.sfuReconnects ?? 0) + 1;
    failed = false;
    setStatus(e.detail.resumed ? '' : 'Reconnected (the room had let you go; you rejoined).');
    for (const tile of document.querySelectorAll('#tiles .tile')) startPlayback(tile);
  });
  client.addEventListener('disconnected', () => {
    setStatus('Disconnected: could not reach the server again.');
    $('#rejoin').hidden = false;
  });
  $('#rejoin').addEventListener('click', () => location.reload());
  wireChat(client, name);

  let localStream = null;
  $('#leave').addEventListener('click', async () => {
    $('#leave').disabled = true;
    await client.leave();
    localStream?.getTracks().forEach((t) => t.stop());
    for (const tile of document.querySelectorAll('#tiles .tile')) {
      if (tile.id === 'local') tile.hidden = true;
      else tile.remove();
    }
    $('#toggle-mic').hidden = $('#toggle-cam').hidden = true;
    setStatus('You left the room.');
  }, { once: true });

  if (publish) {
    setStatus('Starting camera and microphone…');
    localStream = await getLocalMedia(name, options.simulcast);
  }
  try {
    setStatus('Joining…');
    // ?token=: an access token from the application (docs/AUTH.md); without one, a
    // server in development mode lets the page join by room and name.
    await client.join(room, name, { token: params.get('token') || undefined });
    setChatEnabled(true);
    setStatus(localStream || !publish ? `Joined as ${name}` : `Joined as ${name} (watching only: no camera or microphone)`);
    if (localStream) {
      const trackIds = await Promise.all(localStream.getTracks().map((track) => client.publishTrack(track, {
        stream: localStream,
        ...(track.kind === 'video' && options.simulcast ? { sendEncodings: SIMULCAST_ENCODINGS } : {}),
      })));
      const byKind = Object.fromEntries(localStream.getTracks().map((t, i) => [t.kind, trackIds[i]]));
      wireMuteButton($('#toggle-mic'), client, byKind.audio, ['Mute mic', 'Unmute mic']);
      wireMuteButton($('#toggle-cam'), client, byKind.video, ['Stop camera', 'Start camera']);
    }
  } catch (error) {
    setStatus(`Could not join: ${error.message}`);
  }
}

/**
 * Wire the chat panel to the client: show what others send on the chat channel
 * (with their display names) and send what we type.
 * @param {SfuClient} client
 * @param {string} name Our display name, shown on our own messages.
 */
function wireChat(client, name) {
  // Names by participant id, kept after people leave so their last messages still
  // show who wrote them.
  const names = new Map();
  client.addEventListener('participantjoined', (e) => names.set(e.detail.participant.id, e.detail.participant.name));

  client.addEventListener('data', (e) => {
    const { label, from, data } = e.detail;
    if (label !== CHAT_CHANNEL) return;
    const text = typeof data === 'string' ? data : `[${data.byteLength ?? 0} bytes of binary data]`;
    addChatMessage(names.get(from) ?? client.participants.get(from)?.name ?? from, text, false);
  });
  client.addEventListener('dataoverflow', (e) => {
    if (e.detail.label === CHAT_CHANNEL) addChatNotice('Some messages were missed (connection too slow).');
  });
  client.addEventListener('error', (e) => {
    if (e.detail.label === CHAT_CHANNEL) addChatNotice(`Message not delivered: ${e.detail.message}`);
  });

  $('#chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#chat-input');
    const text = input.value;
    if (!text.trim()) return;
    try {
      client.sendData(CHAT_CHANNEL, text);
    } catch (error) {
      addChatNotice(`Could not send: ${error.message}`);
      return;
    }
    addChatMessage(name, text, true);
    input.value = '';
    input.focus();
  });
  $('#leave').addEventListener('click', () => setChatEnabled(false), { once: true });
}

/**
 * Append a message to the chat log (as text, never as markup).
 * @param {string} from Sender's display name.
 * @param {string} text
 * @param {boolean} own Whether we sent it.
 */
function addChatMessage(from, text, own) {
  const item = document.createElement('li');
  item.className = own ? 'chat-message own' : 'chat-message';
  const fromEl = document.createElement('span');
  fromEl.className = 'chat-from';
  fromEl.textContent = from;
  const textEl = document.createElement('span');
  textEl.className = 'chat-text';
  textEl.textContent = text;
  item.append(fromEl, textEl);
  appendToChatLog(item);
}

/**
 * Append a line about the chat itself (not a message) to the chat log.
 * @param {string} text
 */
function addChatNotice(text) {
  const item = document.createElement('li');
  item.className = 'chat-notice';
  item.textContent = text;
  appendToChatLog(item);
}

/**
 * Append an item to the chat log, following the newest line if the log was at its end.
 * @param {HTMLElement} item
 */
function appendToChatLog(item) {
  const log = $('#chat-log');
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  log.append(item);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

/**
 * Enable or disable the chat input and its Send button.
 * @param {boolean} enabled
 */
function setChatEnabled(enabled) {
  $('#chat-input').disabled = !enabled;
  $('#chat-send').disabled = !enabled;
}

/**
 * Open the camera and microphone and show the local preview.
 * @param {string} name Our display name, for the preview's caption.
 * @param {boolean} simulcast Ask for the camera size the simulcast layers need.
 * @returns {Promise<MediaStream|null>} null when the devices are unavailable or refused.
 */
async function getLocalMedia(name, simulcast) {
  const { width, height } = CAMERA_SIZE[simulcast ? 'simulcast' : 'single'];
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: width }, height: { ideal: height } },
    });
  } catch (error) {
    console.warn('getUserMedia failed', error);
    return null;
  }
  const local = $('#local');
  $('video', local).srcObject = stream;
  $('.name', local).textContent = `${name} (you)`;
  local.hidden = false;
  return stream;
}

/**
 * Show a mute/unmute toggle for one of our published tracks.
 * @param {HTMLButtonElement} button
 * @param {SfuClient} client
 * @param {string|undefined} trackId Server track id; the button stays hidden without one.
 * @param {[string, string]} labels Label while live, label while muted.
 */
function wireMuteButton(button, client, trackId, labels) {
  if (!trackId) return;
  button.hidden = false;
  button.addEventListener('click', () => {
    const muted = button.getAttribute('aria-pressed') !== 'true';
    client.setMuted(trackId, muted);
    button.setAttribute('aria-pressed', String(muted));
    button.textContent = labels[muted ? 1 : 0];
  });
}

/**
 * The tile of a remote participant, if shown.
 * @param {string} participantId
 * @returns {HTMLElement|null}
 */
function tileFor(participantId) {
  return document.querySelector(`#tiles [data-participant-id="${CSS.escape(participantId)}"]`);
}

/**
 * Add a tile for a remote participant, rendering its `stream`.
 * @param {import('./sfu-client.js').Participant} participant
 * @param {SfuClient} client
 */
function addTile(participant, client) {
  const tile = $('#tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.participantId = participant.id;
  $('.name', tile).textContent = participant.name;
  const video = $('video', tile);
  video.srcObject = participant.stream;

  const muteAudio = $('.mute-audio', tile);
  muteAudio.addEventListener('click', () => {
    video.muted = !video.muted;
    muteAudio.setAttribute('aria-pressed', String(video.muted));
    muteAudio.textContent = video.muted ? 'Unmute' : 'Mute';
    if (!video.muted) startPlayback(tile); // a click may lift an autoplay block
  });
  const hideVideo = $('.hide-video', tile);
  hideVideo.addEventListener('click', () => {
    const hidden = tile.classList.toggle('video-hidden');
    hideVideo.setAttribute('aria-pressed', String(hidden));
    hideVideo.textContent = hidden ? 'Show video' : 'Hide video';
    // A hidden video needs no bandwidth: ask the server to pause it.
    for (const trackId of videoTrackIds(client, participant.id)) {
      sendTrackSettings(client, trackId, { paused: hidden });
    }
  });

  $('#tiles').append(tile);
  watchTileSize(tile, video, client, participant.id);
}

/**
 * Keep the server told of the size, in device pixels, that a tile shows its video at
 * (or of the page's fixed `maxHeight`): once per video track, then again when the
 * tile has been resized and stayed so for TILE_SIZE_DEBOUNCE_MS. The server forwards
 * the smallest layer that covers that size.
 * Sets `tile.reportSize()`, called when a video track of the tile gets media.
 * @param {HTMLElement} tile
 * @param {HTMLVideoElement} video
 * @param {SfuClient} client
 * @param {string} participantId
 */
function watchTileSize(tile, video, client, participantId) {
  if (options.maxHeight === null) return; // `maxHeight=none`: never cap
  /** The size last sent ("WxH"), by track id. */
  const sent = new Map();
  let timer = null;
  const report = () => {
    timer = null;
    const box = video.getBoundingClientRect();
    const size = options.maxHeight !== undefined
      ? { maxHeight: options.maxHeight }
      : { maxWidth: Math.round(box.width * devicePixelRatio), maxHeight: Math.round(box.height * devicePixelRatio) };
    if (!(size.maxHeight > 0)) return; // not laid out (e.g. the page is hidden)
    const key = `${size.maxWidth ?? ''}x${size.maxHeight}`;
    for (const trackId of videoTrackIds(client, participantId)) {
      if (sent.get(trackId) === key) continue;
      sent.set(trackId, key);
      sendTrackSettings(client, trackId, size);
    }
  };
  tile.reportSize = report;
  if (options.maxHeight !== undefined) return; // a fixed cap: nothing to watch
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(report, TILE_SIZE_DEBOUNCE_MS);
  };
  const observer = new ResizeObserver(schedule);
  // The device-pixel box also changes with devicePixelRatio (zoom, moving the window
  // to another screen), not only with the CSS size; the media query catches a ratio
  // change where the box is not observed again.
  try {
    observer.observe(video, { box: 'device-pixel-content-box' });
  } catch {
    observer.observe(video);
  }
  const watchRatio = () => {
    matchMedia(`(resolution: ${devicePixelRatio}dppx)`).addEventListener('change', () => {
      schedule();
      watchRatio();
    }, { once: true });
  };
  watchRatio();
}

/**
 * Ids of the video tracks `participantId` publishes.
 * @param {SfuClient} client
 * @param {string} participantId
 * @returns {string[]}
 */
function videoTrackIds(client, participantId) {
  const tracks = client.participants.get(participantId)?.tracks.values() ?? [];
  return [...tracks].filter((t) => t.kind === 'video').map((t) => t.id);
}

/**
 * `client.setTrackSettings`, recorded in `window.sfuSettingsSent`.
 * @param {SfuClient} client
 * @param {string} trackId
 * @param {import('./sfu-client.js').TrackSettings} settings
 */
function sendTrackSettings(client, trackId, settings) {
  try {
    client.setTrackSettings(trackId, settings);
    window.sfuSettingsSent.push({ at: performance.now(), trackId, settings });
  } catch (error) {
    console.warn('track_settings not sent', error);
  }
}

/**
 * Show on the tile of the participant publishing `trackId` which layer the server
 * forwards and why: the label carries `data-layer` (the RID, `paused`, or `single`
 * for a track without simulcast), `data-reason`, `data-width`, `data-height` and
 * `data-track-id`. The tile shows its participant's first video track.
 * @param {SfuClient} client
 * @param {string} trackId
 */
function showLayer(client, trackId) {
  const participantId = [...client.participants.values()].find((p) => p.tracks.has(trackId))?.id;
  if (!participantId || videoTrackIds(client, participantId)[0] !== trackId) return;
  const tile = tileFor(participantId);
  const label = tile && $('.layer', tile);
  const info = client.layers.get(trackId);
  if (!label || !info) return;
  const size = info.width && info.height ? `${info.width}x${info.height}` : '';
  const layer = info.paused ? 'paused' : info.rid ?? 'single';
  label.dataset.layer = layer;
  label.dataset.reason = info.reason ?? '';
  label.dataset.width = info.width ?? '';
  label.dataset.height = info.height ?? '';
  label.dataset.trackId = trackId;
  const what = info.paused ? 'paused' : [info.rid, size].filter(Boolean).join(' ') || 'video';
  label.textContent = `${what} · ${(info.reason ?? '').replaceAll('_', ' ')}`;
  label.title = `Layer the server forwards (${layer}) and why: ${info.reason}`;
  label.hidden = false;
}

/**
 * Play a tile's media. If the browser blocks autoplay with sound, play muted and
 * let the tile's Unmute button (a user gesture) turn the sound on.
 * @param {HTMLElement|null} tile
 */
function startPlayback(tile) {
  const video = tile && $('video', tile);
  if (!video) return;
  video.play().catch(() => {
    video.muted = true;
    const muteAudio = $('.mute-audio', tile);
    muteAudio.setAttribute('aria-pressed', 'true');
    muteAudio.textContent = 'Unmute';
    video.play().catch(() => {});
  });
}

/**
 * Show "mic off" / "camera off" on a tile from the participant's track states.
 * @param {string} participantId
 * @param {SfuClient} client
 */
function updateBadges(participantId, client) {
  const tile = tileFor(participantId);
  const participant = client.participants.get(participantId);
  if (!tile || !participant) return;
  const tracks = [...participant.tracks.values()];
  const off = (kind) => !tracks.some((t) => t.kind === kind && !t.muted);
  $('.mic-off', tile).hidden = !off('audio');
  $('.cam-off', tile).hidden = !off('video');
  tile.classList.toggle('camera-off', off('video'));
}

/**
 * Show a one-line status under the room title.
 * @param {string} text
 */
function setStatus(text) {
  $('#status').textContent = text;
}
