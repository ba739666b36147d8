/**
 * Token authentication: a JWT (RFC 7519) from `Authorization: Bearer …` or
 * `?token=…`, verified with `jose` against one key source (`AUTH_JWT_SECRET`,
 * `AUTH_JWT_PUBLIC_KEY` or `AUTH_JWKS_URL`), with an algorithm allow-list
 * derived from that key (`jwt_keys.ts`), `iss` and `aud` when configured,
 * and a `sub` naming who connects.
 *
 * A token that fails is an {@link AuthFailure} with a bounded
 * {@link AuthFailureReason} for the log line; the token itself is never
 * kept, logged or echoed. A key set that cannot be fetched is not the
 * client's fault: {@link AuthUnavailableError}.
 *
 * @module
 */
import {
  createRemoteJWKSet,
  type CryptoKey,
  errors,
  importSPKI,
  type JWSHeaderParameters,
  jwtVerify,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
} from "jose";
import type { Settings } from "../settings.ts";
import {
  HMAC_ALGORITHMS,
  JWKS_ALGORITHMS,
  publicKeyAlgorithms,
} from "./jwt_keys.ts";

/** Which check a token failed: a bounded set, for log lines. */
export type AuthFailureReason =
  | "missing"
  | "malformed"
  | "algorithm"
  | "signature"
  | "key"
  | "expired"
  | "not_yet_valid"
  | "issuer"
  | "audience"
  | "subject"
  | "claims";

/** The longest `sub` accepted, in UTF-16 units (it keys logs and limits). */
export const MAX_SUBJECT_LENGTH = 256;

/** Milliseconds a key set fetch may take (jose's own default). */
export const JWKS_TIMEOUT_MS = 5000;

const MESSAGES: Readonly<Record<AuthFailureReason, string>> = {
  missing: "Authentication required: send a bearer token",
  malformed: "Cannot authenticate: the token is not a well-formed JWT",
  algorithm: "Cannot authenticate: the token's algorithm is not allowed",
  signature: "Cannot authenticate: the token's signature does not verify",
  key: "Cannot authenticate: no key verifies the token",
  expired: "Cannot authenticate: the token has expired",
  not_yet_valid: "Cannot authenticate: the token is not valid yet (nbf)",
  issuer: "Cannot authenticate: the token's issuer (iss) is not accepted",
  audience: "Cannot authenticate: the token's audience (aud) is not accepted",
  subject:
    `Cannot authenticate: the token needs a subject (sub) of 1 to ${MAX_SUBJECT_LENGTH} characters`,
  claims: "Cannot authenticate: a claim of the token is invalid",
};

/** A token that did not pass, and which check it failed. */
export class AuthFailure {
  /** The check that failed. */
  readonly reason: AuthFailureReason;
  /** What the client and the log line are told. */
  readonly message: string;

  /**
   * Creates the failure.
   *
   * @param reason The check that failed.
   */
  constructor(reason: AuthFailureReason) {
    this.reason = reason;
    this.message = MESSAGES[reason];
  }
}

/** Who a verified token names. */
export interface Identity {
  /** The token's `sub`. */
  readonly subject: string;
  /** The token's `exp` in epoch ms; `undefined` when it has none. */
  readonly expiresAt: number | undefined;
}

/**
 * The key set (`AUTH_JWKS_URL`) cannot be fetched or read: nothing is known
 * about the token, so the client should retry, not get a new token.
 */
export class AuthUnavailableError extends Error {
  /**
   * Creates the error.
   *
   * @param message What failed, e.g. `Cannot fetch AUTH_JWKS_URL: …`.
   * @param options The underlying error as `cause`.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AuthUnavailableError";
  }
}

/** Where the verification keys come from. */
export type KeySource =
  | { readonly kind: "secret"; readonly secret: string }
  | { readonly kind: "public_key"; readonly pem: string }
  | { readonly kind: "jwks"; readonly url: string };

/** Options for {@link Authenticator}. */
export interface AuthenticatorOptions {
  /** The one key source. */
  readonly key: KeySource;
  /** Required `iss`; any when unset. */
  readonly issuer?: string;
  /** Required `aud` (one of the token's); any when unset. */
  readonly audience?: string;
}

/**
 * Reads the token of an upgrade request: `Authorization: Bearer <token>`
 * (RFC 6750 §2.1; the scheme is case-insensitive), else the `token` query
 * parameter (for browsers, which cannot set headers on a WebSocket). Another
 * scheme in `Authorization` counts as no credentials (RFC 6750 §3.1).
 *
 * @param headers The request's headers.
 * @param query The request URL's query parameters.
 * @returns The token, or `undefined` when the request carries none.
 */
export function tokenFrom(
  headers: Headers,
  query: URLSearchParams,
): string | undefined {
  const authorization = headers.get("authorization");
  if (authorization !== null) {
    const match = /^bearer +([^ ]+) *$/i.exec(authorization);
    if (match) return match[1];
  }
  const token = query.get("token");
  return token === null || token === "" ? undefined : token;
}

/** Verifies tokens against one key source; one per server. */
export class Authenticator {
  /** The key source's kind, for `/status` and the ready line. */
  readonly kind: KeySource["kind"];
  readonly #getKey: JWTVerifyGetKey;
  readonly #options: JWTVerifyOptions;

  /**
   * Prepares verification; it fetches nothing until the first token (a key
   * set is fetched then, and cached and refreshed as jose does: at most
   * every 30 s for an unknown `kid`, at least every 10 min).
   *
   * @param options The key source, issuer and audience.
   * @throws {TypeError} When a public key cannot be used (the settings
   *   check this first).
   */
  constructor(options: AuthenticatorOptions) {
    const { key } = options;
    this.kind = key.kind;
    let algorithms: readonly string[];
    if (key.kind === "secret") {
      algorithms = HMAC_ALGORITHMS;
      const bytes = new TextEncoder().encode(key.secret);
      this.#getKey = keyPerAlgorithm((alg) =>
        crypto.subtle.importKey(
          "raw",
          bytes,
          { name: "HMAC", hash: `SHA-${alg.slice(2)}` },
          false,
          ["verify"],
        )
      );
    } else if (key.kind === "public_key") {
      algorithms = publicKeyAlgorithms(key.pem);
      this.#getKey = keyPerAlgorithm((alg) => importSPKI(key.pem, alg));
    } else {
      algorithms = JWKS_ALGORITHMS;
      const remote = createRemoteJWKSet(new URL(key.url), {
        timeoutDuration: JWKS_TIMEOUT_MS,
      });
      this.#getKey = async (header, token) => {
        try {
          return await remote(header, token);
        } catch (error) {
          // A key the set lacks is the token's problem; a set that cannot
          // be fetched or read is ours.
          if (
            error instanceof errors.JWKSNoMatchingKey ||
            error instanceof errors.JWKSMultipleMatchingKeys ||
            error instanceof errors.JOSENotSupported
          ) throw error;
          throw new AuthUnavailableError(
            `Cannot fetch the key set at AUTH_JWKS_URL: ${
              (error as Error).message
            }`,
            { cause: error },
          );
        }
      };
    }
    this.#options = {
      algorithms: [...algorithms],
      issuer: options.issuer,
      audience: options.audience,
      requiredClaims: ["sub"],
    };
  }

  /**
   * The authenticator the settings ask for.
   *
   * @param settings Parsed settings.
   * @returns An authenticator, or `undefined` when no key source is set
   *   (authentication off).
   */
  static fromSettings(settings: Settings): Authenticator | undefined {
    const key = keySource(settings);
    if (key === undefined) return undefined;
    return new Authenticator({
      key,
      issuer: settings.authJwtIssuer,
      audience: settings.authJwtAudience,
    });
  }

  /**
   * Verifies a token: signature with an allowed algorithm, `exp`, `nbf`,
   * `iss` and `aud` when configured, and a string `sub`.
   *
   * @param token The compact JWS, or `undefined` when the request had none.
   * @returns Who it names, or which check failed.
   * @throws {AuthUnavailableError} When the key set cannot be fetched.
   * @throws {Error} Anything else jose throws (a bug or an unusable key in
   *   the set), for the caller to answer as an internal error.
   */
  async verify(token: string | undefined): Promise<Identity | AuthFailure> {
    if (token === undefined) return new AuthFailure("missing");
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.#getKey, this.#options));
    } catch (error) {
      const reason = failureReason(error);
      if (reason === undefined) throw error;
      return new AuthFailure(reason);
    }
    const { sub, exp } = payload;
    if (
      typeof sub !== "string" || sub === "" || sub.length > MAX_SUBJECT_LENGTH
    ) {
      return new AuthFailure("subject");
    }
    return {
      subject: sub,
      expiresAt: typeof exp === "number" ? exp * 1000 : undefined,
    };
  }
}

/**
 * A key resolver that imports the key once per algorithm; jose has checked
 * the algorithm against the allow-list before it asks.
 */
function keyPerAlgorithm(
  load: (alg: string) => Promise<CryptoKey>,
): JWTVerifyGetKey {
  const keys = new Map<string, Promise<CryptoKey>>();
  return (header: JWSHeaderParameters) => {
    const alg = header.alg!;
    let key = keys.get(alg);
    if (key === undefined) {
      key = load(alg);
      keys.set(alg, key);
    }
    return key;
  };
}

/** Maps jose's errors to the check that failed; `undefined` for others. */
function failureReason(error: unknown): AuthFailureReason | undefined {
  if (error instanceof errors.JWTExpired) return "expired";
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case "nbf":
        return "not_yet_valid";
      case "iss":
        return "issuer";
      case "aud":
        return "audience";
      case "sub":
        return "subject";
      default:
        return "claims";
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return "algorithm";
  if (error instanceof errors.JWSSignatureVerificationFailed) {
    return "signature";
  }
  if (
    error instanceof errors.JWKSNoMatchingKey ||
    error instanceof errors.JWKSMultipleMatchingKeys
  ) return "key";
  if (
    error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid ||
    error instanceof errors.JOSENotSupported
  ) return "malformed";
  return undefined;
}

/** The key source the settings name, if any (at most one may be set). */
function keySource(settings: Settings): KeySource | undefined {
  return settings.authJwtSecret !== undefined
    ? { kind: "secret", secret: settings.authJwtSecret }
    : settings.authJwtPublicKey !== undefined
    ? { kind: "public_key", pem: settings.authJwtPublicKey }
    : settings.authJwksUrl !== undefined
    ? { kind: "jwks", url: settings.authJwksUrl }
    : undefined;
}

/**
 * Names how clients authenticate, for `/status` and the ready line.
 *
 * @param settings Parsed settings.
 * @returns `off`, or the key source's kind (`secret`, `public_key`, `jwks`).
 */
export function authenticationMode(
  settings: Settings,
): "off" | KeySource["kind"] {
  return keySource(settings)?.kind ?? "off";
}
