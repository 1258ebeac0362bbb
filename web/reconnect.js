// Reconnection of an SfuClient (docs/PROTOCOL.md "Reconnection").
//
// When the WebSocket drops, stops answering pings, or the PeerConnection fails (a
// network change, a laptop lid, Wi-Fi to cellular), the client closes both and tries
// again with exponential backoff: a new WebSocket, `join` with `resume` (its
// participant id and resume key, and the same token), a new PeerConnection, its
// tracks published again (naming their previous ids, so that subscribers keep their
// tiles), its DataChannels opened again, and the room subscribed to again. The page
// hears `reconnecting`, then `reconnected` ({resumed}) or, on giving up,
// `disconnected` followed by `closed`.

/** First delay between attempts, ms; it doubles up to MAX_DELAY_MS. */
export const FIRST_DELAY_MS = 500;
export const MAX_DELAY_MS = 5000;
/** Refusals another attempt cannot change. */
const FINAL_CODES = new Set(['invalid_token', 'forbidden', 'invalid_room', 'bad_message']);

/** Delays between attempts: `first` ms, doubling up to `limit` ms. */
export class Backoff {
  constructor(first = FIRST_DELAY_MS, limit = MAX_DELAY_MS) {
    this._next = first;
    this.limit = limit;
  }

  /** @returns {number} The delay before the next attempt, ms. */
  next() {
    const delay = this._next;
    this._next = Math.min(this.limit, delay * 2);
    return delay;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Reconnect `client` (an SfuClient whose connection was lost).
 * @param {import('./sfu-client.js').SfuClient} client
 * @param {string} reason Why the connection was lost.
 * @param {number} timeoutMs How long to keep trying.
 */
export async function reconnect(client, reason, timeoutMs) {
  client._emit('reconnecting', { reason });
  const published = [...client.localTracks.entries()].map(([trackId, local]) => ({ trackId, ...local }));
  const channels = [...client._dataChannels]
    .filter((c) => client._ownChannels.has(c))
    .map((c) => ({ label: c.label, ordered: c.ordered, maxRetransmits: c.maxRetransmits, maxPacketLifeTime: c.maxPacketLifeTime }));
  client._dropConnection(new Error(`reconnecting: ${reason}`));

  const message = { ...client._joinMessage };
  if (client.participantId && client.resumeKey) {
    message.resume = { participantId: client.participantId, key: client.resumeKey };
  }
  const backoff = new Backoff();
  const deadline = performance.now() + timeoutMs;
  let joined;
  for (;;) {
    try {
      await client._connect();
      joined = await client._requestJoin(message);
      break;
    } catch (error) {
      client._dropConnection(error);
      const delay = backoff.next();
      if (client._closed || FINAL_CODES.has(error.code) || performance.now() + delay > deadline) {
        client._reconnecting = false;
        client._emit('disconnected', { reason: error.message });
        client._close('reconnection failed');
        return;
      }
      await sleep(delay);
      if (client._closed) return;
    }
  }

  client._createPeerConnection();
  client._onJoined(joined);
  // The roster as the server has it now: who left meanwhile is gone, who came is added,
  // and what everyone publishes is subscribed to again on the new PeerConnection.
  const present = new Map(joined.participants.map((p) => [p.id, p]));
  for (const id of [...client.participants.keys()]) {
    if (!present.has(id)) client._removeParticipant(id);
  }
  for (const data of joined.participants) {
    const participant = client.participants.get(data.id);
    if (!participant) {
      client._addParticipant(data);
      continue;
    }
    const tracks = new Map((data.tracks ?? []).map((t) => [t.id, t]));
    for (const trackId of [...participant.tracks.keys()]) {
      if (!tracks.has(trackId)) {
        client._removeTrack(data.id, trackId);
        client._emit('trackunpublished', { participantId: data.id, trackId });
      }
    }
    for (const track of tracks.values()) {
      if (participant.tracks.has(track.id)) {
        participant.tracks.get(track.id).muted = Boolean(track.muted);
        if (client.permissions?.canSubscribe !== false) {
          client._enqueue({ type: 'subscribe', trackId: track.id, kind: track.kind, participantId: data.id });
        }
      } else {
        client._addTrack(data.id, track);
      }
    }
  }
  for (const { label, ordered, maxRetransmits, maxPacketLifeTime } of channels) {
    if (!client.channels.has(label)) client.openChannel(label, { ordered, maxRetransmits, maxPacketLifeTime });
  }
  client._ensureApplication();
  const republished = published
    .filter(({ track }) => track.readyState === 'live')
    .map(({ trackId, track, source, sendEncodings, stream }) => new Promise((resolve) => {
      client._enqueue({ type: 'publish', track, source, sendEncodings, stream, previousId: trackId, resolve, reject: resolve });
    }));
  client._reconnecting = false;
  await Promise.all(republished);
  client._emit('reconnected', { resumed: Boolean(joined.resumed), participantId: client.participantId });
}
