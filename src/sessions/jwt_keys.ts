/**
 * Which JWS algorithms (RFC 7518 §3.1) a verification key may check, derived
 * from the key itself, so a token cannot choose a weaker check than the
 * operator configured: never `none`, never HMAC with a public key (the
 * "public key as HMAC secret" confusion), never RSA with an EC key.
 *
 * Read synchronously with `node:crypto` so that `settings.ts` can refuse a
 * bad key at start (exit 2) before anything is served.
 *
 * @module
 */
import { createPublicKey, type KeyObject } from "node:crypto";

/** Algorithms of an HMAC key (`AUTH_JWT_SECRET`). */
export const HMAC_ALGORITHMS: readonly string[] = Object.freeze([
  "HS256",
  "HS384",
  "HS512",
]);

/** RS* and PS* need an RSA key of at least this many bits (RFC 7518 §3.3). */
export const MIN_RSA_BITS = 2048;

const RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
const EC_ALGORITHMS: Readonly<Record<string, string>> = {
  prime256v1: "ES256",
  "P-256": "ES256",
  secp384r1: "ES384",
  "P-384": "ES384",
  secp521r1: "ES512",
  "P-521": "ES512",
};
// jose names Ed25519 signatures both ways: EdDSA (RFC 8037) and Ed25519
// (RFC 9864).
const ED25519_ALGORITHMS = ["EdDSA", "Ed25519"];

/**
 * Algorithms a JSON Web Key Set may verify: every asymmetric one; HMAC keys
 * have no place in a published key set.
 */
export const JWKS_ALGORITHMS: readonly string[] = Object.freeze([
  ...RSA_ALGORITHMS,
  "ES256",
  "ES384",
  "ES512",
  ...ED25519_ALGORITHMS,
]);

/**
 * Turns `AUTH_JWT_PUBLIC_KEY` as an environment holds it into PEM text:
 * literal `\n` escapes (a one-line variable) become line breaks.
 *
 * @param raw The variable's value.
 * @returns PEM text.
 */
export function normalisePem(raw: string): string {
  return raw.replace(/\\n/g, "\n").trim() + "\n";
}

/**
 * The algorithms a PEM public key verifies.
 *
 * @param pem An SPKI public key, `-----BEGIN PUBLIC KEY-----`.
 * @returns The algorithms, e.g. `["ES256"]` for a P-256 key.
 * @throws {TypeError} When the text is not a public key sockeye can use:
 *   a private key, an RSA key under 2048 bits, an RSA-PSS-only key (Web
 *   Crypto cannot import one; an ordinary RSA key verifies PS* tokens), or a
 *   type other than RSA, EC P-256/P-384/P-521 and Ed25519. The message
 *   finishes the sentence "expected …".
 *
 * @example
 * ```ts
 * publicKeyAlgorithms(rsaPem); // ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
 * ```
 */
export function publicKeyAlgorithms(pem: string): readonly string[] {
  if (/PRIVATE KEY-----/.test(pem)) {
    throw new TypeError(
      "a public key (-----BEGIN PUBLIC KEY-----), not a private one",
    );
  }
  if (!/-----BEGIN PUBLIC KEY-----/.test(pem)) {
    throw new TypeError("a PEM public key (-----BEGIN PUBLIC KEY-----)");
  }
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new TypeError("a PEM public key (-----BEGIN PUBLIC KEY-----)");
  }
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "rsa":
      if ((details.modulusLength ?? 0) < MIN_RSA_BITS) {
        throw new TypeError(`an RSA key of at least ${MIN_RSA_BITS} bits`);
      }
      return RSA_ALGORITHMS;
    case "ec": {
      const alg = EC_ALGORITHMS[details.namedCurve ?? ""];
      if (alg === undefined) {
        throw new TypeError("an EC key on P-256, P-384 or P-521");
      }
      return [alg];
    }
    case "ed25519":
      return ED25519_ALGORITHMS;
    default:
      throw new TypeError(
        "an RSA (rsaEncryption), EC (P-256, P-384, P-521) or Ed25519 key",
      );
  }
}
