// SFU room client: one WebSocket (JSON room protocol, docs/PROTOCOL.md) and one
// RTCPeerConnection per participant. The client always offers; the server answers.
//
// All changes to the transceivers (adding or reusing them, setting them inactive)
// happen inside the negotiation loop, just before the offer that carries them, so one
// offer is in flight at a time and requests made meanwhile are coalesced into the
// next offer. DataChannels are created at once (so callers get the channel object),
// but the offer that adds the m=application section for them is made by the loop too.
//
// DataChannel messages are envelopes (PROTOCOL.md, "DataChannels"): the server fans
// each one out to the other participants and tells the receivers who sent it.

/** Default publish source per track kind (PROTOCOL.md, "offer"). */
import {
  RESERVED_LABEL_PREFIX, checkLabel, decodeEnvelope, encodeEnvelope, sameReliability,
} from './envelope.js';
import { reconnect } from './reconnect.js';

const DEFAULT_SOURCE = { video: 'camera', audio: 'microphone' };
/** A ping goes to the server this often, ms; nothing heard for PING_TIMEOUT_MS is a lost connection. */
const PING_INTERVAL_MS = 5000;
const PING_TIMEOUT_MS = 12000;
/** A PeerConnection `disconnected` this long (ms) is treated as failed. */
const DISCONNECTED_TIMEOUT_MS = 5000;
/** Close code of a WebSocket we close to reconnect (1000 or 1001 would tell the server we left). */
const RECONNECT_CLOSE_CODE = 4000;

/** How long `leave()` waits for the server's `left` before closing anyway. */
const LEAVE_TIMEOUT_MS = 2000;

/** Label of the reliable channel every client opens when it joins (the demo's chat). */
const DEFAULT_CHANNEL = 'chat';

/**
 * @typedef {object} TrackInfo
 * @property {string} id       Server track id (`TR_...`).
 * @property {string} kind     `audio` or `video`.
 * @property {string} source   `camera`, `microphone`, `screen`, `screen_audio` or `custom`.
 * @property {boolean} muted   Whether the publisher has muted it.
 * @property {string[]} [layers] For a video track published with simulcast: its
 *   layers' RIDs, lowest resolution first (e.g. `['q', 'h', 'f']`); absent for a
 *   track sent as a single encoding.
 */

/**
 * @typedef {object} TrackSettings
 * What a subscriber asks of one subscribed video track (PROTOCOL.md,
 * "track_settings"). Fields left out are left as they are.
 * @property {number|null} [maxHeight] The height the video is shown at, in device
 *   pixels (the tile's CSS height times `devicePixelRatio`): the server forwards at
 *   most the smallest layer that covers it, at least this tall (the largest layer when
 *   none is), so the picture is not upscaled while a larger layer exists. null removes
 *   the cap.
 * @property {number|null} [maxWidth] The width the video is shown at, in device pixels
 *   (the covering layer must be at least this wide too). null removes it.
 * @property {boolean} [paused] true: the server stops forwarding the track;
 *   false: it resumes.
 */

/**
 * @typedef {object} LayerInfo
 * Detail of the `layerchanged` event: the layer the server now forwards on one of our
 * subscribed video tracks, and why (PROTOCOL.md, "layer_changed").
 * @property {string} trackId           The subscribed track.
 * @property {string|null} mid          Our m-line receiving it.
 * @property {string|null} rid          The simulcast layer's RID; null for a track
 *   sent as a single encoding, and while paused.
 * @property {number|null} layer        Layer index, 0 = lowest; null while paused.
 * @property {number|null} width        Layer width in pixels, when the server knows it.
 * @property {number|null} height       Layer height in pixels, when the server knows it.
 * @property {boolean} paused           Nothing is forwarded (see `reason`).
 * @property {string} reason            `bandwidth` (our estimated downlink),
 *   `preference` (our {@link TrackSettings}), `paused` (our pause) or
 *   `publisher_layer_lost` (the publisher stopped sending a layer).
 * @property {number} receivedAt        `performance.now()` when the event arrived, in ms.
 */

/**
 * @typedef {object} Participant
 * @property {string} id                    Server participant id (`PA_...`).
 * @property {string} name                  Display name.
 * @property {Map<string, TrackInfo>} tracks Published tracks by track id.
 * @property {MediaStream} stream           The participant's subscribed tracks, for rendering.
 */

/**
 * @typedef {object} ChannelOptions
 * Reliability of a DataChannel (as in `RTCDataChannelInit`). Without
 * `maxRetransmits` and `maxPacketLifeTime` the channel is reliable; set at most one.
 * @property {boolean} [ordered=true]         Deliver in order.
 * @property {number} [maxRetransmits]        Give up on a message after this many retransmissions.
 * @property {number} [maxPacketLifeTime]     Give up on a message after this many milliseconds.
 */

/**
 * @typedef {object} DataMessage
 * Detail of the `data` event: one message another participant sent.
 * @property {string} label              The channel's label.
 * @property {string} from               Sender's participant id (set by the server).
 * @property {string|null} topic         The sender's topic, or null.
 * @property {string|Uint8Array} data    A string for a text message, the payload bytes
 *   for a binary one.
 */

/**
 * @typedef {object} SendOptions
 * @property {string|string[]} [to]  Participant id(s) to deliver to; everyone else in
 *   the room by default. Unknown ids are ignored by the server.
 * @property {string} [topic]        A tag of at most 64 characters for receivers to filter on.
 */

/**
 * Client for one participant in one room.
 *
 * Events (all `CustomEvent`s; the payload is in `event.detail`):
 * - `participantjoined` `{participant}`: someone is in the room (also fired, on join,
 *   for everyone already there).
 * - `participantleft` `{participantId, participant}`
 * - `trackpublished` `{participantId, track}` (a {@link TrackInfo})
 * - `trackunpublished` `{participantId, trackId}`
 * - `trackmuted` / `trackunmuted` `{participantId, trackId}`
 * - `remotetrack` `{participantId, trackId, track, kind, stream}`: media of a
 *   subscribed track is bound to `track` (a MediaStreamTrack), already added to the
 *   participant's `stream`.
 * - `layerchanged` {@link LayerInfo}: the server switched the layer it forwards on
 *   a subscribed video track (also its first layer, and pausing/resuming); the
 *   latest per track is in `client.layers`.
 * - `activespeaker` `{participantId}`: the room's loudest participant changed (the
 *   server's RFC 6464 audio-level detection; also in `client.activeSpeaker`).
 * - `data` {@link DataMessage}: a DataChannel message from another participant.
 * - `channelopen` `{label, channel}`: the channel that `sendData(label, ...)` uses
 *   is open (messages sent before are queued until then).
 * - `dataoverflow` `{label}`: we fell so far behind on reliable channel `label` that
 *   the server closed it towards us; messages sent meanwhile are lost to us. The
 *   client opens the channel again by itself, so later messages arrive.
 * - `removed` `{reason, message}`: the server removed us (`duplicate_identity`: we
 *   joined again from elsewhere; `removed`: by the application; `room_deleted`); the
 *   connection closes next.
 * - `permissionschanged` `{permissions}`: the application changed our grants (e.g.
 *   `canPublish: false`: the server unpublished our tracks); also in `client.permissions`.
 * - `participantupdated` `{participant}`: someone's name or metadata changed.
 * - `error` `{code, message, requestType, label}`: the server refused a request, or
 *   negotiation failed. DataChannel errors (`data_too_large`, `bad_data`, and
 *   `bad_envelope` for a malformed message from the server) name the channel in
 *   `label`; it is null otherwise.
 * - `servershutdown` `{message}`: the server is shutting down (it closes the
 *   connection right after; `closed` follows). Join again later with a new client.
 * - `reconnecting` `{reason}`: the connection to the server was lost (WebSocket
 *   closed or silent for 12 s, PeerConnection failed or disconnected for 5 s); the
 *   client reconnects by itself with backoff (0.5 s doubling to 5 s) and resumes its
 *   participant (docs/PROTOCOL.md "Reconnection"). Remote tracks arrive again as
 *   `remotetrack` on the same participants' streams; `client.pc` is a new one.
 * - `reconnected` `{resumed, participantId}`: back in the room; `resumed` is false when
 *   the server had already removed us (we are a new participant then).
 * - `disconnected` `{reason}`: reconnection gave up (`closed` follows).
 * - `closed` `{reason}`: the connection ended (after `leave()`, a removal, a shutdown
 *   or a failed reconnection).
 */
export class SfuClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket URL of the room service; defaults to
   *   `ws(s)://<this page's host>/ws`.
   * @param {RTCConfiguration} [options.rtcConfig] Extra PeerConnection settings
   *   (e.g. `iceServers`); bundling is always `max-bundle`.
   * @param {string|null} [options.defaultChannel='chat'] Label of the reliable channel
   *   opened at join, before the first offer (so a participant without media can
   *   exchange data); null to open none.
   * @param {boolean} [options.reconnect=true] Reconnect by itself when the connection
   *   is lost (see the `reconnecting` event).
   * @param {number} [options.reconnectTimeoutMs=60000] How long to keep trying.
   */
  constructor({ url, rtcConfig = {}, defaultChannel = DEFAULT_CHANNEL, reconnect = true, reconnectTimeoutMs = 60000 } = {}) {
    super();
    /** WebSocket URL of the room service. */
    this.url = url ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    this._rtcConfig = rtcConfig;
    this._reconnect = reconnect;
    this._reconnectTimeoutMs = reconnectTimeoutMs;
    this._reconnecting = false;
    this._leaving = false;
    /** Whether the media connection has been up once (only then do we reconnect). */
    this._wasConnected = false;
    /** Bumped when a connection is dropped: work of the old one stops quietly. */
    this._generation = 0;
    this._pingTimer = null;
    this._lastHeardAt = 0;
    /** The secret that resumes our participant after a lost connection (from `joined`). */
    this.resumeKey = null;
    /** The PeerConnection to the server (exposed for `getStats()`; a new one after a reconnection). */
    this.pc = null;
    /** Our participant id, once joined. */
    this.participantId = null;
    /** The room joined, once joined. */
    this.room = null;
    /** @type {Map<string, Participant>} Everyone else in the room, by participant id. */
    this.participants = new Map();
    /** @type {Map<string, {track: MediaStreamTrack, source: string, transceiver: RTCRtpTransceiver}>}
     *  Our published tracks, by server track id. */
    this.localTracks = new Map();
    /** @type {Map<string, RTCDataChannel>} The channel `sendData` uses, by label: the
     *  one we opened, else one the server opened towards us. */
    this.channels = new Map();
    /** @type {Map<string, LayerInfo>} The latest `layer_changed` per subscribed
     *  video track id (kept until the track is unpublished). */
    this.layers = new Map();
    /** @type {string | null} The room's active speaker (participant id), if any. */
    this.activeSpeaker = null;
    /** Whether the server said it is shutting down (`servershutdown`). */
    this.serverShutdown = false;

    this._defaultChannel = defaultChannel;
    /** Every DataChannel we listen on (ours and the server's), open or opening. */
    this._dataChannels = new Set();
    /** Channels we opened ourselves (they take precedence for sending). */
    this._ownChannels = new WeakSet();
    /** Messages sent on a channel that is not open yet, flushed when it opens. */
    this._outbox = new WeakMap();
    /** Labels to open again once their channel has closed (after `data_overflow`). */
    this._reopen = new Set();

    this._ws = null;
    this._closed = false;
    /** Requests waiting for the negotiation loop (publish / subscribe / unsubscribe). */
    this._intents = [];
    this._negotiating = false;
    this._negotiationScheduled = false;
    /** The offer in flight: `{resolve, reject}` settled by `answer` or an offer error. */
    this._pendingOffer = null;
    this._pendingJoin = null;
    this._pendingLeave = null;
    /** Remote track id -> transceiver receiving it (set when the subscription is requested). */
    this._subscriptions = new Map();
    /** Remote track id -> participant id, for subscriptions the server has confirmed. */
    this._remoteOwners = new Map();
    /** Remote track id -> {@link TrackSettings} asked for before the subscription was
     *  confirmed; sent once it is. */
    this._pendingSettings = new Map();
    /** ICE candidates gathered before the first offer went out. */
    this._candidateBacklog = [];
    this._offerSent = false;
    this._createPeerConnection();
  }

  /** A new PeerConnection to the server, wired to this client (also after a reconnection). */
  _createPeerConnection() {
    const pc = new RTCPeerConnection({ ...this._rtcConfig, bundlePolicy: 'max-bundle' });
    this.pc = pc;
    this._candidateBacklog = [];
    this._offerSent = false;
    let disconnectedTimer = null;
    pc.addEventListener('icecandidate', (event) => {
      if (pc !== this.pc) return;
      const candidate = event.candidate ? event.candidate.toJSON() : null;
      if (this._offerSent) this._send({ type: 'candidate', candidate });
      else this._candidateBacklog.push(candidate);
    });
    pc.addEventListener('datachannel', (event) => {
      if (pc === this.pc) this._adoptChannel(event.channel, false);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this.pc) return;
      clearTimeout(disconnectedTimer);
      if (pc.connectionState === 'connected') this._wasConnected = true;
      if (pc.connectionState === 'failed') {
        this._emit('error', { code: 'connection_failed', message: 'media connection to the server failed', requestType: null, label: null });
        this._onConnectionLost('the media connection failed');
      } else if (pc.connectionState === 'disconnected') {
        disconnectedTimer = setTimeout(() => {
          if (pc === this.pc && pc.connectionState === 'disconnected') this._onConnectionLost('the media connection is down');
        }, DISCONNECTED_TIMEOUT_MS);
      }
    });
    return pc;
  }

  /**
   * Connect, join `room` as `name`, and subscribe to everything already published there
   * (unless the token does not allow subscribing). With an access `token` (docs/AUTH.md:
   * minted by the application's backend) the room, identity, name and permissions come
   * from it; without one only a server in development mode lets you in.
   * If the server refuses the join (e.g. `invalid_token`, `forbidden`, `invalid_room`),
   * the promise rejects with an Error carrying `code`, and `join` may be called again on
   * the same connection.
   * @param {string|null} room Room name (1-64 of `A-Z a-z 0-9 _ -`); may be null with a token.
   * @param {string|null} name Display name; ignored with a token.
   * @param {{token?: string}} [options]
   * @returns {Promise<object>} The server's `joined` message.
   */
  async join(room, name, { token } = {}) {
    if (!this._ws) await this._connect();
    const message = token ? { type: 'join', token } : { type: 'join', room, name };
    if (token && room) message.room = room;
    const joined = await this._requestJoin(message);
    this._joinMessage = message;
    this._onJoined(joined);
    this._startPings();
    // Before the subscriptions below, so that the first offer carries m=application.
    if (this._defaultChannel) this.openChannel(this._defaultChannel);
    this._ensureApplication();
    for (const p of joined.participants) this._addParticipant(p);
    return joined;
  }

  /**
   * Open a DataChannel, or return the one already open with this label and the same
   * reliability. A message sent on it reaches every other participant's channel with
   * the same label and reliability (the server opens one towards those who lack it).
   * If no offer has carried an m=application section yet, the client renegotiates;
   * messages sent meanwhile are queued until the channel opens.
   * @param {string} label Any label not starting with `_sfu`.
   * @param {ChannelOptions} [options]
   * @returns {RTCDataChannel}
   * @throws {Error} For a reserved label, or when we already opened `label` with
   *   another reliability.
   */
  openChannel(label, { ordered = true, maxRetransmits, maxPacketLifeTime } = {}) {
    checkLabel(label);
    if (this._closed) throw new Error('client is closed');
    const options = { ordered, maxRetransmits: maxRetransmits ?? null, maxPacketLifeTime: maxPacketLifeTime ?? null };
    const existing = this.channels.get(label);
    if (existing && sameReliability(existing, options)) return existing;
    if (existing && this._ownChannels.has(existing)) {
      throw new Error(`DataChannel "${label}" is already open with another reliability`);
    }
    const init = { ordered };
    if (maxRetransmits != null) init.maxRetransmits = maxRetransmits;
    if (maxPacketLifeTime != null) init.maxPacketLifeTime = maxPacketLifeTime;
    const channel = this.pc.createDataChannel(label, init);
    this._adoptChannel(channel, true);
    this._ensureApplication();
    return channel;
  }

  /**
   * Send a message to the room on DataChannel `label`, wrapped in the envelope: a
   * string goes as a text message, bytes (ArrayBuffer or any ArrayBufferView) as a
   * binary one. Before the channel is open the message is queued. The server refuses
   * envelopes over 65,280 bytes with an `error` event `data_too_large`.
   * @param {string} label A channel from `openChannel` (or one the server opened).
   * @param {string|ArrayBuffer|ArrayBufferView} data
   * @param {SendOptions} [options]
   * @throws {Error} For a reserved label or a label with no channel.
   * @throws {TypeError} For other kinds of `data`, or a bad `to`/`topic`.
   */
  sendData(label, data, { to, topic } = {}) {
    checkLabel(label);
    const channel = this.channels.get(label);
    if (!channel || this._closed) throw new Error(`no DataChannel "${label}": call openChannel("${label}") first`);
    const message = encodeEnvelope(data, { to, topic });
    if (channel.readyState === 'open') {
      channel.send(message);
    } else {
      this._outbox.get(channel).push(message);
    }
  }

  /**
   * Publish every track of a MediaStream (e.g. from `getUserMedia`).
   * @param {MediaStream} stream
   * @param {object} [options]
   * @param {string} [options.source] Source for every track; by default `camera` for
   *   video and `microphone` for audio.
   * @returns {Promise<string[]>} The server track ids, in the order of `stream.getTracks()`.
   */
  publish(stream, { source } = {}) {
    return Promise.all(stream.getTracks().map((track) => this.publishTrack(track, { source, stream })));
  }

  /**
   * Publish one track on a new `sendonly` transceiver and renegotiate.
   * @param {MediaStreamTrack} track
   * @param {object} [options]
   * @param {string} [options.source] Defaults to `camera` (video) or `microphone` (audio).
   * @param {RTCRtpEncodingParameters[]} [options.sendEncodings] Encodings for the sender,
   *   e.g. simulcast layers with rids `q`, `h`, `f`; by default a single encoding.
   * @param {MediaStream} [options.stream] Stream to associate the track with (msid).
   * @returns {Promise<string>} The server track id, once the server has answered.
   *   Rejects when the server does not take the track; `error.code` is `rejected`
   *   when it refused the m-line (e.g. no codec it can forward; the message says why).
   */
  publishTrack(track, { source = DEFAULT_SOURCE[track.kind], sendEncodings, stream } = {}) {
    return new Promise((resolve, reject) => {
      this._enqueue({ type: 'publish', track, source, sendEncodings, stream, resolve, reject });
    });
  }

  /**
   * Mute or unmute one of our published tracks: disables the track locally (the
   * browser then sends silence or black frames) and tells the room.
   * @param {string} trackId Server track id returned by `publish`/`publishTrack`.
   * @param {boolean} muted
   */
  setMuted(trackId, muted) {
    const local = this.localTracks.get(trackId);
    if (!local) throw new Error(`not a published track: ${trackId}`);
    local.track.enabled = !muted;
    this._send({ type: 'mute', trackId, muted });
  }

  /**
   * Ask the server to cap the resolution of a subscribed video track, or to pause or
   * resume it (PROTOCOL.md, "track_settings"). Only the fields given are sent. Before
   * the server has confirmed the subscription, the settings are kept (merged with
   * earlier ones) and sent once it has; a refusal arrives as an `error` event
   * (`unknown_track`, `bad_message`).
   * @param {string} trackId A remote video track id (from `trackpublished`).
   * @param {TrackSettings} settings
   * @throws {Error} When no participant in the room publishes `trackId`.
   * @throws {TypeError} For a `maxHeight` or `maxWidth` that is not a positive integer
   *   or null, or a `paused` that is not a boolean.
   */
  setTrackSettings(trackId, { maxHeight, maxWidth, paused } = {}) {
    const settings = {};
    for (const [key, value] of [['maxHeight', maxHeight], ['maxWidth', maxWidth]]) {
      if (value === undefined) continue;
      if (value !== null && !(Number.isInteger(value) && value > 0)) {
        throw new TypeError(`${key} must be a positive integer (device pixels) or null`);
      }
      settings[key] = value;
    }
    if (paused !== undefined) {
      if (typeof paused !== 'boolean') throw new TypeError('paused must be a boolean');
      settings.paused = paused;
    }
    if (![...this.participants.values()].some((p) => p.tracks.has(trackId))) {
      throw new Error(`not a remote track: ${trackId}`);
    }
    if (!Object.keys(settings).length) return;
    if (this._remoteOwners.has(trackId)) {
      this._send({ type: 'track_settings', trackId, ...settings });
    } else {
      this._pendingSettings.set(trackId, { ...this._pendingSettings.get(trackId), ...settings });
    }
  }

  /**
   * Leave the room: tell the server, then close the PeerConnection and WebSocket.
   * Local tracks are left running (they belong to the caller).
   * @returns {Promise<void>} Resolves once closed.
   */
  async leave() {
    if (this._closed) return;
    this._leaving = true;
    if (this._ws?.readyState === WebSocket.OPEN) {
      await new Promise((resolve) => {
        this._pendingLeave = resolve;
        setTimeout(resolve, LEAVE_TIMEOUT_MS);
        this._send({ type: 'leave' });
      });
    }
    this._close('left');
  }

  // --- WebSocket --------------------------------------------------------------

  _connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this._ws = ws;
      ws.addEventListener('open', () => resolve(), { once: true });
      ws.addEventListener('error', () => reject(new Error(`cannot connect to ${this.url}`)), { once: true });
      ws.addEventListener('message', (event) => {
        if (ws !== this._ws) return;
        this._lastHeardAt = performance.now();
        this._onMessage(event.data);
      });
      ws.addEventListener('close', () => {
        reject(new Error('connection closed'));
        if (ws === this._ws) this._onConnectionLost('connection closed');
      });
    });
  }

  /** Send `join` and wait for `joined` (rejects with the server's error, `code` set). */
  _requestJoin(message) {
    return new Promise((resolve, reject) => {
      this._pendingJoin = { resolve, reject };
      this._send(message);
    });
  }

  /** Take the `joined` reply: our ids, the ICE servers, our permissions. */
  _onJoined(joined) {
    this.participantId = joined.participantId;
    this.identity = joined.identity;
    this.resumeKey = joined.resumeKey ?? null;
    if (Array.isArray(joined.iceServers) && joined.iceServers.length) {
      // The server's STUN/TURN servers (TURN credentials minted for us), before the
      // first offer gathers candidates; servers given to the constructor come first.
      const config = this.pc.getConfiguration();
      this.pc.setConfiguration({ ...config, iceServers: [...(this._rtcConfig.iceServers || []), ...joined.iceServers] });
    }
    this.permissions = joined.permissions || {};
    this.room = joined.room;
  }

  /** Ping the server every PING_INTERVAL_MS; silence for PING_TIMEOUT_MS is a lost connection. */
  _startPings() {
    clearInterval(this._pingTimer);
    this._lastHeardAt = performance.now();
    this._pingTimer = setInterval(() => {
      if (this._reconnecting || this._closed) return;
      if (performance.now() - this._lastHeardAt > PING_TIMEOUT_MS) {
        this._onConnectionLost('no answer from the server');
        return;
      }
      this._send({ type: 'ping' });
    }, PING_INTERVAL_MS);
  }

  /**
   * The WebSocket closed or the media connection failed: reconnect (unless we are
   * leaving, were removed, the server shut down, or reconnection is off), else close.
   */
  _onConnectionLost(reason) {
    if (this._reconnecting || this._closed) return;
    // A media connection that never came up (a firewall, no TURN) would not come up on
    // another try either: the page shows why instead.
    if (!this._reconnect || this._leaving || this.removed || this.serverShutdown || !this.participantId || !this._wasConnected) {
      this._close(reason);
      return;
    }
    this._reconnecting = true;
    reconnect(this, reason, this._reconnectTimeoutMs);
  }

  /**
   * Drop the connection without closing the client (before a reconnection): the
   * WebSocket and PeerConnection close, requests in flight fail with `error`, and
   * everything bound to the old PeerConnection (our tracks' transceivers, the
   * subscriptions, the channels) is forgotten. The participants stay listed.
   */
  _dropConnection(error) {
    this._generation += 1;
    const ws = this._ws;
    this._ws = null;
    ws?.close(RECONNECT_CLOSE_CODE); // not 1000: the server keeps our place for the reconnection
    this._pendingJoin?.reject(error);
    this._pendingOffer?.reject(error);
    this._pendingJoin = this._pendingOffer = null;
    for (const intent of this._intents.splice(0)) intent.reject?.(error);
    this.pc?.close();
    for (const [trackId, participantId] of this._remoteOwners) {
      const transceiver = this._subscriptions.get(trackId);
      if (transceiver) this.participants.get(participantId)?.stream.removeTrack(transceiver.receiver.track);
    }
    this.localTracks.clear();
    this._subscriptions.clear();
    this._remoteOwners.clear();
    this._pendingSettings.clear();
    this.layers.clear();
    this._dataChannels.clear();
    this.channels.clear();
    this._reopen.clear();
  }

  _send(message) {
    if (this._ws?.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emit('error', { code: 'bad_json', message: 'server sent a frame that is not JSON', requestType: null, label: null });
      return;
    }
    switch (msg.type) {
      case 'joined':
        this._pendingJoin?.resolve(msg);
        this._pendingJoin = null;
        break;
      case 'answer':
        this._pendingOffer?.resolve(msg);
        this._pendingOffer = null;
        break;
      case 'error':
        this._onError(msg);
        break;
      case 'participant_joined':
        this._addParticipant(msg.participant);
        break;
      case 'participant_left':
        this._removeParticipant(msg.participantId);
        break;
      case 'track_published':
        this._addTrack(msg.participantId, msg.track);
        break;
      case 'track_unpublished':
        this._removeTrack(msg.participantId, msg.trackId);
        this._emit('trackunpublished', { participantId: msg.participantId, trackId: msg.trackId });
        break;
      case 'track_muted':
      case 'track_unmuted':
        this._setRemoteMuted(msg.participantId, msg.trackId, msg.type === 'track_muted');
        break;
      case 'left':
        this._pendingLeave?.();
        break;
      case 'data_overflow':
        this._onDataOverflow(msg.label);
        break;
      case 'layer_changed':
        this._onLayerChanged(msg);
        break;
      case 'removed':
        // The server removed us: our identity joined again elsewhere, the application
        // removed us, or the room was deleted. The server closes the connection.
        this.removed = msg.reason;
        this._emit('removed', { reason: msg.reason, message: typeof msg.message === 'string' ? msg.message : msg.reason });
        break;
      case 'permissions_changed':
        this.permissions = msg.permissions || {};
        if (this.permissions.canSubscribe === false) {
          // The server stopped sending; the next offer sets those m-lines inactive (an
          // offer still receiving on them would be refused with `forbidden`).
          for (const trackId of [...this._subscriptions.keys()]) this._enqueue({ type: 'unsubscribe', trackId });
        }
        this._emit('permissionschanged', { permissions: this.permissions });
        break;
      case 'participant_updated': {
        const participant = this.participants.get(msg.participant?.id);
        if (participant) {
          participant.name = msg.participant.name;
          participant.metadata = msg.participant.metadata;
        }
        this._emit('participantupdated', { participant: msg.participant });
        break;
      }
      case 'server_shutdown':
        this.serverShutdown = true;
        this._emit('servershutdown', { message: typeof msg.message === 'string' ? msg.message : 'the server is shutting down' });
        break;
      case 'active_speaker':
        if (typeof msg.participantId === 'string') {
          this.activeSpeaker = msg.participantId;
          this._emit('activespeaker', { participantId: msg.participantId });
        }
        break;
      default:
        break; // `pong` and message types this client does not use.
    }
  }

  /** Record and announce the layer the server now forwards on a subscribed track. */
  _onLayerChanged(msg) {
    if (typeof msg.trackId !== 'string') return;
    /** @type {LayerInfo} */
    const info = {
      trackId: msg.trackId,
      mid: msg.mid ?? null,
      rid: msg.rid ?? null,
      layer: msg.layer ?? null,
      width: msg.width ?? null,
      height: msg.height ?? null,
      paused: Boolean(msg.paused),
      reason: msg.reason ?? null,
      receivedAt: performance.now(),
    };
    this.layers.set(info.trackId, info);
    this._emit('layerchanged', info);
  }

  _onError(msg) {
    const error = Object.assign(new Error(msg.message), { code: msg.code, requestType: msg.requestType });
    if (msg.requestType === 'offer' && this._pendingOffer) {
      this._pendingOffer.reject(error);
      this._pendingOffer = null;
    } else if (msg.requestType === 'join' && this._pendingJoin) {
      this._pendingJoin.reject(error);
      this._pendingJoin = null;
    } else {
      this._emit('error', { code: msg.code, message: msg.message, requestType: msg.requestType ?? null, label: msg.label ?? null });
    }
  }

  _close(reason) {
    if (this._closed) return;
    this._closed = true;
    const error = new Error(reason);
    this._pendingJoin?.reject(error);
    this._pendingOffer?.reject(error);
    this._pendingLeave?.();
    this._pendingJoin = this._pendingOffer = this._pendingLeave = null;
    for (const intent of this._intents.splice(0)) intent.reject?.(error);
    this._reopen.clear();
    clearInterval(this._pingTimer);
    this.pc.close();
    this._ws?.close();
    this._emit('closed', { reason });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- Room state -------------------------------------------------------------

  _addParticipant({ id, name, tracks = [] }) {
    const participant = { id, name, tracks: new Map(), stream: new MediaStream() };
    this.participants.set(id, participant);
    this._emit('participantjoined', { participant });
    for (const track of tracks) this._addTrack(id, track);
  }

  _removeParticipant(participantId) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    for (const trackId of [...participant.tracks.keys()]) this._removeTrack(participantId, trackId);
    this.participants.delete(participantId);
    this._emit('participantleft', { participantId, participant });
  }

  _addTrack(participantId, track) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    participant.tracks.set(track.id, { ...track, muted: Boolean(track.muted) });
    this._emit('trackpublished', { participantId, track: participant.tracks.get(track.id) });
    if (this.permissions?.canSubscribe === false) return; // the token does not allow it
    this._enqueue({ type: 'subscribe', trackId: track.id, kind: track.kind, participantId });
  }

  _removeTrack(participantId, trackId) {
    const participant = this.participants.get(participantId);
    participant?.tracks.delete(trackId);
    const transceiver = this._subscriptions.get(trackId);
    if (participant && transceiver && this._remoteOwners.has(trackId)) {
      participant.stream.removeTrack(transceiver.receiver.track);
    }
    this._remoteOwners.delete(trackId);
    this._pendingSettings.delete(trackId);
    this.layers.delete(trackId);
    // A subscription still waiting in the queue is simply dropped; one already
    // applied to the PeerConnection is set inactive by the next offer.
    const queued = this._intents.findIndex((i) => i.type === 'subscribe' && i.trackId === trackId);
    if (queued >= 0) this._intents.splice(queued, 1);
    else this._enqueue({ type: 'unsubscribe', trackId });
  }

  _setRemoteMuted(participantId, trackId, muted) {
    const info = this.participants.get(participantId)?.tracks.get(trackId);
    if (info) info.muted = muted;
    this._emit(muted ? 'trackmuted' : 'trackunmuted', { participantId, trackId });
  }

  // --- Negotiation ------------------------------------------------------------

  /** Queue a change for the next offer and make sure an offer will be made. */
  _enqueue(intent) {
    if (this._closed) {
      intent.reject?.(new Error('client is closed'));
      return;
    }
    this._intents.push(intent);
    if (this._negotiating || this._negotiationScheduled) return;
    // Defer one task so that requests made together (join + publish) share an offer.
    this._negotiationScheduled = true;
    setTimeout(() => {
      this._negotiationScheduled = false;
      this._negotiationLoop();
    }, 0);
  }

  async _negotiationLoop() {
    if (this._negotiating) return;
    this._negotiating = true;
    try {
      while (this._intents.length && !this._closed) {
        await this._negotiate(this._intents.splice(0));
      }
    } finally {
      this._negotiating = false;
    }
  }

  /**
   * Apply a batch of intents to the PeerConnection, offer, and apply the answer.
   * @param {object[]} batch
   */
  async _negotiate(batch) {
    /** New mid bindings of this offer: {transceiver, binding, intent, mid}. */
    const bindings = [];
    const generation = this._generation;
    let changed = false;
    for (const intent of batch) changed = this._apply(intent, bindings) || changed;
    if (!changed) return;

    try {
      await this.pc.setLocalDescription();
      const tracks = {};
      for (const entry of bindings) {
        // Kept: a transceiver whose m-line the answer rejects loses its mid.
        entry.mid = entry.transceiver.mid;
        tracks[entry.mid] = entry.binding;
      }
      const answer = await new Promise((resolve, reject) => {
        this._pendingOffer = { resolve, reject };
        this._send({ type: 'offer', sdp: this.pc.localDescription.sdp, tracks });
        this._flushCandidates();
      });
      await this.pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      this._applyAnswer(answer.tracks ?? {}, bindings);
    } catch (error) {
      for (const { intent } of bindings) intent.reject?.(error);
      if (this._closed || generation !== this._generation) return; // the connection was dropped
      if (this.pc.signalingState === 'have-local-offer') {
        await this.pc.setLocalDescription({ type: 'rollback' });
      }
      for (const { transceiver, intent } of bindings) {
        if (intent.type === 'subscribe') this._subscriptions.delete(intent.trackId);
        this._release(transceiver);
      }
      this._emit('error', { code: error.code ?? 'negotiation_failed', message: error.message, requestType: 'offer', label: null });
    }
  }

  /**
   * Apply one intent to the PeerConnection.
   * @returns {boolean} Whether the PeerConnection changed (an offer is needed).
   */
  _apply(intent, bindings) {
    switch (intent.type) {
      case 'publish': {
        const transceiver = this.pc.addTransceiver(intent.track, {
          direction: 'sendonly',
          streams: intent.stream ? [intent.stream] : [],
          ...(intent.sendEncodings ? { sendEncodings: intent.sendEncodings } : {}),
        });
        const binding = { publish: { source: intent.source, muted: !intent.track.enabled } };
        if (intent.previousId) binding.publish.trackId = intent.previousId; // after a reconnection
        bindings.push({ transceiver, binding, intent });
        return true;
      }
      case 'subscribe': {
        const transceiver = this._freeTransceiver(intent.kind);
        if (transceiver) transceiver.direction = 'recvonly';
        const bound = transceiver ?? this.pc.addTransceiver(intent.kind, { direction: 'recvonly' });
        this._subscriptions.set(intent.trackId, bound);
        bindings.push({ transceiver: bound, binding: { subscribe: intent.trackId }, intent });
        return true;
      }
      case 'unsubscribe': {
        const transceiver = this._subscriptions.get(intent.trackId);
        if (!transceiver) return false;
        this._subscriptions.delete(intent.trackId);
        transceiver.direction = 'inactive';
        return true;
      }
      case 'application':
        // The channels exist already; an offer made now carries m=application,
        // unless an earlier one has negotiated the SCTP transport.
        return this.pc.sctp === null;
      default:
        throw new Error(`unknown intent ${intent.type}`);
    }
  }

  /**
   * An inactive transceiver of `kind` that no request has claimed: negotiated
   * inactive, or never negotiated at all (after a failed offer).
   */
  _freeTransceiver(kind) {
    const claimed = new Set(this._subscriptions.values());
    return this.pc.getTransceivers().find((t) =>
      t.receiver.track.kind === kind &&
      t.direction === 'inactive' &&
      (t.currentDirection === 'inactive' || t.currentDirection === null) &&
      !claimed.has(t));
  }

  /** Bind the answer's `tracks` map to our publish and subscribe requests. */
  _applyAnswer(answerTracks, bindings) {
    for (const { transceiver, intent, mid } of bindings) {
      const entry = answerTracks[mid];
      if (intent.type === 'publish') {
        if (entry?.direction === 'publish') {
          this.localTracks.set(entry.trackId, {
            track: intent.track, source: intent.source, transceiver, sendEncodings: intent.sendEncodings, stream: intent.stream,
          });
          intent.resolve(entry.trackId);
        } else {
          this._release(transceiver);
          // A rejected m-line (e.g. no codec the server can forward) says why.
          const why = entry?.rejected ? `: ${entry.rejected}` : '';
          intent.reject(Object.assign(new Error(`server did not accept the ${intent.source} track${why}`),
            { code: entry?.rejected ? 'rejected' : 'not_accepted' }));
        }
      } else if (entry?.direction === 'subscribe' && entry.trackId === intent.trackId) {
        this._bindRemoteTrack(intent.trackId, entry.participantId ?? intent.participantId, transceiver);
      } else if (this._subscriptions.get(intent.trackId) === transceiver) {
        // The track has gone: the server answered the m-line inactive. Free it for reuse.
        this._subscriptions.delete(intent.trackId);
        this._release(transceiver);
      }
    }
  }

  /**
   * Set a transceiver inactive (taking effect with the next offer) so it can be
   * reused. One whose m-line the server rejected is stopped already: it stays so.
   */
  _release(transceiver) {
    if (isStopped(transceiver)) return;
    transceiver.direction = 'inactive';
    if (transceiver.sender.track) transceiver.sender.replaceTrack(null);
  }

  _bindRemoteTrack(trackId, participantId, transceiver) {
    const participant = this.participants.get(participantId);
    // Gone meanwhile: its unsubscribe is already queued.
    if (!participant || !participant.tracks.has(trackId)) return;
    const track = transceiver.receiver.track;
    participant.stream.addTrack(track);
    this._remoteOwners.set(trackId, participantId);
    const settings = this._pendingSettings.get(trackId);
    if (settings) {
      this._pendingSettings.delete(trackId);
      this._send({ type: 'track_settings', trackId, ...settings });
    }
    this._emit('remotetrack', { participantId, trackId, track, kind: track.kind, stream: participant.stream });
  }

  // --- DataChannels -----------------------------------------------------------

  /** Queue an offer with m=application unless one has been negotiated or is queued. */
  _ensureApplication() {
    if (!this.participantId || this.pc.sctp !== null || this._dataChannels.size === 0) return;
    if (this._intents.some((i) => i.type === 'application')) return;
    this._enqueue({ type: 'application' });
  }

  /**
   * Listen on a channel: ours (`own`) or one the server opened towards us.
   * @param {RTCDataChannel} channel
   * @param {boolean} own
   */
  _adoptChannel(channel, own) {
    const label = channel.label;
    // Reserved labels are the server's business; never surface them as room data.
    if (label.startsWith(RESERVED_LABEL_PREFIX)) return;
    channel.binaryType = 'arraybuffer';
    this._dataChannels.add(channel);
    this._outbox.set(channel, []);
    if (own) this._ownChannels.add(channel);
    const current = this.channels.get(label);
    if (own || !current || current.readyState === 'closing' || current.readyState === 'closed') {
      this.channels.set(label, channel);
    }

    let announced = false;
    const opened = () => {
      for (const message of this._outbox.get(channel).splice(0)) channel.send(message);
      if (announced || this.channels.get(label) !== channel) return;
      announced = true;
      this._emit('channelopen', { label, channel });
    };
    channel.addEventListener('open', opened);
    channel.addEventListener('message', (event) => this._onChannelMessage(label, event.data));
    channel.addEventListener('close', () => this._onChannelClosed(channel));
    // A channel that arrives by `datachannel` is usually open already.
    if (channel.readyState === 'open') queueMicrotask(opened);
  }

  _onChannelMessage(label, raw) {
    let message;
    try {
      message = decodeEnvelope(raw);
    } catch (error) {
      this._emit('error', {
        code: 'bad_envelope', message: `server sent a malformed message on "${label}": ${error.message}`,
        requestType: null, label,
      });
      return;
    }
    this._emit('data', { label, ...message });
  }

  _onChannelClosed(channel) {
    const label = channel.label;
    this._dataChannels.delete(channel);
    if (this._closed) return;
    if (this.channels.get(label) === channel) {
      this.channels.delete(label);
      // Another channel with this label (e.g. the server's) takes over, ours first.
      const others = [...this._dataChannels].filter((c) => c.label === label);
      const next = others.find((c) => this._ownChannels.has(c)) ?? others[0];
      if (next) this.channels.set(label, next);
    }
    if (this._reopen.delete(label)) this._reopenChannel(label, channel);
  }

  /**
   * The server closed reliable channel `label` towards us. Tell the application, and
   * open the channel again (once the closed one is gone) so later messages arrive.
   */
  _onDataOverflow(label) {
    if (typeof label !== 'string') return;
    this._emit('dataoverflow', { label });
    const current = this.channels.get(label);
    if (current && (current.readyState === 'open' || current.readyState === 'connecting' || current.readyState === 'closing')) {
      // Its close event (which may still be on the way) reopens it.
      this._reopen.add(label);
    } else {
      this._reopenChannel(label, current);
    }
  }

  _reopenChannel(label, previous) {
    if (this._closed || this.channels.has(label)) return;
    const options = previous
      ? { ordered: previous.ordered, maxRetransmits: previous.maxRetransmits, maxPacketLifeTime: previous.maxPacketLifeTime }
      : {};
    try {
      this.openChannel(label, options);
    } catch (error) {
      this._emit('error', { code: 'channel_failed', message: error.message, requestType: null, label });
    }
  }

  _flushCandidates() {
    if (this._offerSent) return;
    this._offerSent = true;
    for (const candidate of this._candidateBacklog.splice(0)) this._send({ type: 'candidate', candidate });
  }
}

/** Whether a transceiver is stopped (its m-line rejected, or stopped locally). */
function isStopped(transceiver) {
  return transceiver.currentDirection === 'stopped' || transceiver.direction === 'stopped';
}
