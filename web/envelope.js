// DataChannel envelopes and labels of the room protocol (docs/PROTOCOL.md,
// "DataChannels"), for web/sfu-client.js.

/** DataChannel labels with this prefix are reserved for the server. */
export const RESERVED_LABEL_PREFIX = '_sfu';

/** Largest JSON header of a binary envelope (its length is a 16-bit field). */
const MAX_BINARY_HEADER = 0xffff;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** @throws {Error} if `label` is not a string, or is reserved for the server. */
export function checkLabel(label) {
  if (typeof label !== 'string') throw new TypeError('a DataChannel label must be a string');
  if (label.startsWith(RESERVED_LABEL_PREFIX)) {
    throw new Error(`DataChannel labels starting with "${RESERVED_LABEL_PREFIX}" are reserved for the server: "${label}"`);
  }
}

/** Whether `channel` has the reliability `options` asks for. */
export function sameReliability(channel, { ordered, maxRetransmits, maxPacketLifeTime }) {
  return channel.ordered === ordered &&
    (channel.maxRetransmits ?? null) === maxRetransmits &&
    (channel.maxPacketLifeTime ?? null) === maxPacketLifeTime;
}

/**
 * Build the envelope the server expects (PROTOCOL.md, "DataChannels").
 * @param {string|ArrayBuffer|ArrayBufferView} data
 * @param {SendOptions} options
 * @returns {string|Uint8Array} A JSON string (text) or the binary envelope.
 */
export function encodeEnvelope(data, { to, topic }) {
  const header = {};
  if (to !== undefined && to !== null) {
    const ids = typeof to === 'string' ? [to] : to;
    if (!Array.isArray(ids) || !ids.every((id) => typeof id === 'string')) {
      throw new TypeError('`to` must be a participant id or an array of them');
    }
    header.to = ids;
  }
  if (topic !== undefined && topic !== null) {
    if (typeof topic !== 'string') throw new TypeError('`topic` must be a string');
    header.topic = topic;
  }
  if (typeof data === 'string') return JSON.stringify({ data, ...header });

  let payload;
  if (data instanceof ArrayBuffer) payload = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) payload = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw new TypeError('DataChannel data must be a string, an ArrayBuffer or an ArrayBufferView');
  const headerBytes = Object.keys(header).length ? textEncoder.encode(JSON.stringify(header)) : new Uint8Array(0);
  if (headerBytes.length > MAX_BINARY_HEADER) throw new TypeError('envelope header too long');
  const out = new Uint8Array(2 + headerBytes.length + payload.length);
  new DataView(out.buffer).setUint16(0, headerBytes.length);
  out.set(headerBytes, 2);
  out.set(payload, 2 + headerBytes.length);
  return out;
}

/**
 * Unwrap an envelope the server delivered.
 * @param {string|ArrayBuffer} raw
 * @returns {{from: string, topic: string|null, data: string|Uint8Array}}
 * @throws {Error} if it is not a valid delivered envelope.
 */
export function decodeEnvelope(raw) {
  let header;
  let data;
  if (typeof raw === 'string') {
    header = JSON.parse(raw);
    if (header === null || typeof header !== 'object' || Array.isArray(header) || !('data' in header)) {
      throw new Error('text envelope is not an object with "data"');
    }
    data = header.data;
  } else {
    const bytes = new Uint8Array(raw);
    if (bytes.length < 2) throw new Error('binary envelope shorter than its length field');
    const length = new DataView(bytes.buffer, bytes.byteOffset).getUint16(0);
    if (bytes.length < 2 + length) throw new Error('binary envelope shorter than its header');
    header = JSON.parse(textDecoder.decode(bytes.subarray(2, 2 + length)));
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw new Error('binary envelope header is not an object');
    }
    data = bytes.slice(2 + length);
  }
  if (typeof header.from !== 'string') throw new Error('envelope has no "from"');
  return { from: header.from, topic: typeof header.topic === 'string' ? header.topic : null, data };
}
