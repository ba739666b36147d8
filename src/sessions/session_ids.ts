/**
 * Session ids nobody can guess their way into: with `SESSION_SECRET` set,
 * the server issues `<nonce><mac>`, 22 + 22 base64url characters (still
 * matching `^[A-Za-z0-9_-]{1,64}$`): a random 128-bit nonce and the first
 * 128 bits of HMAC-SHA256 (RFC 2104) over the nonce and, with
 * authentication on, the token's subject. Only such ids are accepted, so a
 * client-chosen or altered id is refused without a store lookup, and with
 * authentication an id issued to one subject does not verify for another
 * (whether or not its session still exists).
 *
 * @module
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";

/** Characters of an issued id: a 22-character nonce and a 22-character MAC. */
export const ISSUED_ID_LENGTH = 44;

const NONCE_LENGTH = 22;
// Domain separation: this key signs nothing else, but the label keeps a MAC
// from meaning anything outside session ids (and names the format's version).
const LABEL = "sockeye session id v1\n";

/**
 * A random UUID v4 (RFC 9562) that keeps no other string alive, for the ids
 * an open socket holds (session, connection, request).
 *
 * Deno 2.9's `crypto.randomUUID()` returns a slice of one string holding 128
 * UUIDs, and a slice keeps that whole string (4.6 KB) alive: a socket held
 * while others come and go keeps one such string of its own, a quarter of
 * what a bare Deno server spends per socket (measured: 6.7 → 11.7 KB of heap
 * per held socket with 400 requests between sockets). Changing the case twice
 * copies the characters into a string of their own (about 10 ns).
 *
 * @returns 36 characters, lowercase.
 */
export function randomUuid(): string {
  return crypto.randomUUID().toUpperCase().toLowerCase();
}

/** Issues and checks session ids. */
export class SessionIds {
  readonly #secret: string | undefined;

  /**
   * Creates the issuer.
   *
   * @param secret `SESSION_SECRET`; unset issues UUID v4s and accepts any
   *   well-formed id.
   */
  constructor(secret: string | undefined) {
    this.#secret = secret;
  }

  /** Whether ids carry a MAC (`SESSION_SECRET` is set). */
  get signed(): boolean {
    return this.#secret !== undefined;
  }

  /**
   * A fresh id.
   *
   * @param subject The token's `sub`, with authentication on.
   * @returns A MAC'd id (44 characters), or a UUID v4 without a secret.
   */
  issue(subject?: string): string {
    if (this.#secret === undefined) return randomUuid();
    const nonce = Buffer.from(crypto.getRandomValues(new Uint8Array(16)))
      .toString("base64url");
    return nonce + this.#mac(nonce, subject);
  }

  /**
   * Tells whether this server issued `id` (to `subject`), comparing the MAC
   * in constant time.
   *
   * @param id A client's session id (already matching the id pattern).
   * @param subject The token's `sub`, with authentication on.
   * @returns `true` for an id issued here (always, without a secret).
   */
  verify(id: string, subject?: string): boolean {
    if (this.#secret === undefined) return true;
    if (id.length !== ISSUED_ID_LENGTH) return false;
    const expected = Buffer.from(this.#mac(id.slice(0, NONCE_LENGTH), subject));
    return timingSafeEqual(expected, Buffer.from(id.slice(NONCE_LENGTH)));
  }

  /** The MAC's 22 base64url characters for a nonce and subject. */
  #mac(nonce: string, subject: string | undefined): string {
    return createHmac("sha256", this.#secret!)
      .update(`${LABEL}${nonce}\n${subject ?? ""}`)
      .digest()
      .subarray(0, 16)
      .toString("base64url");
  }
}
