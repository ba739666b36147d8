/**
 * Who the client is behind proxies: `X-Forwarded-For` is believed only when
 * the TCP peer is one of `TRUSTED_PROXIES`, and then only up to the
 * rightmost address that is not itself a trusted proxy (each proxy appends
 * the address it saw; everything left of the first untrusted hop was written
 * by the client and may be made up). Addresses are parsed with `ipaddr.js`.
 *
 * @module
 */
import ipaddr from "ipaddr.js";

type Address = ipaddr.IPv4 | ipaddr.IPv6;
type Range = [Address, number];

/**
 * Parses an address strictly: four-part decimal IPv4 (no `010`, `0x7f` or
 * `127.1` forms) or IPv6; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as
 * a dual-stack listener reports IPv4 peers) becomes its IPv4 address.
 *
 * @param text An address, without port or brackets.
 * @returns The address, or `undefined` when the text is not one.
 */
function parseAddress(text: string): Address | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text);
  if (!ipaddr.IPv6.isValid(text)) return undefined;
  const v6 = ipaddr.IPv6.parse(text);
  return v6.isIPv4MappedAddress() ? v6.toIPv4Address() : v6;
}

function show(address: Address): string {
  return address.kind() === "ipv6"
    ? (address as ipaddr.IPv6).toRFC5952String()
    : address.toString();
}

/**
 * Parses one `TRUSTED_PROXIES` entry: an address (a single host) or
 * `address/prefix`.
 *
 * @param text e.g. `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`.
 * @returns The normalised CIDR (`10.0.0.0/8`, `192.0.2.7/32`), or
 *   `undefined` when the text is neither.
 */
export function normaliseCidr(text: string): string | undefined {
  const slash = text.indexOf("/");
  const address = parseAddress(slash < 0 ? text : text.slice(0, slash));
  if (address === undefined) return undefined;
  const max = address.kind() === "ipv4" ? 32 : 128;
  let bits = max;
  if (slash >= 0) {
    const prefix = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefix)) return undefined;
    bits = Number(prefix);
    // An IPv4-mapped range (::ffff:10.0.0.0/104) is an IPv4 one.
    if (max === 32 && text.includes(":")) bits -= 96;
    if (bits < 0 || bits > max) return undefined;
  }
  return `${show(address)}/${bits}`;
}

/** A list of trusted proxy ranges and the client address they imply. */
export class TrustedProxies {
  readonly #ranges: readonly Range[];

  /**
   * Compiles the list.
   *
   * @param cidrs Normalised CIDRs (see {@link normaliseCidr}), e.g. from
   *   `TRUSTED_PROXIES`; empty trusts no proxy.
   * @throws {TypeError} When an entry is not a CIDR.
   */
  constructor(cidrs: readonly string[] = []) {
    this.#ranges = cidrs.map((cidr) => {
      const normal = normaliseCidr(cidr);
      if (normal === undefined) {
        throw new TypeError(`Cannot parse "${cidr}": expected a CIDR`);
      }
      const [address, bits] = ipaddr.parseCIDR(normal);
      return [address, bits];
    });
  }

  /** Whether any proxy is trusted. */
  get enabled(): boolean {
    return this.#ranges.length > 0;
  }

  #trusts(address: Address): boolean {
    const kind = address.kind();
    return this.#ranges.some(([range, bits]) =>
      range.kind() === kind && address.match(range, bits)
    );
  }

  /**
   * The client's address: the TCP peer, or, when the peer is a trusted
   * proxy, the rightmost `X-Forwarded-For` hop that is not a trusted proxy.
   * A hop that is not an address stops the walk at the hop to its right
   * (the last one a trusted proxy vouched for); if every hop is trusted,
   * the leftmost wins.
   *
   * @param peer The TCP peer's address.
   * @param forwardedFor The `X-Forwarded-For` header (several headers joined
   *   with `,`), or `null`.
   * @returns The address, normalised (IPv4 dotted, IPv6 as RFC 5952); the
   *   peer as given when it is not an address (e.g. a Unix socket).
   *
   * @example
   * ```ts
   * const proxies = new TrustedProxies(["10.0.0.0/8"]);
   * proxies.clientAddress("10.0.0.2", "203.0.113.9, 198.51.100.4, 10.0.0.1");
   * // "198.51.100.4": the client may have written 203.0.113.9 itself
   * ```
   */
  clientAddress(peer: string, forwardedFor: string | null): string {
    if (this.#ranges.length === 0) return peer;
    const peerAddress = parseAddress(peer);
    if (peerAddress === undefined) return peer;
    let client = peerAddress;
    if (forwardedFor !== null && this.#trusts(peerAddress)) {
      const hops = forwardedFor.split(",");
      for (let i = hops.length - 1; i >= 0; i--) {
        const hop = parseAddress(stripPort(hops[i]!.trim()));
        if (hop === undefined) break;
        client = hop;
        if (!this.#trusts(hop)) break;
      }
    }
    return show(client);
  }
}

/** `[2001:db8::1]:443` → `2001:db8::1`; `192.0.2.1:80` → `192.0.2.1`. */
function stripPort(hop: string): string {
  if (hop.startsWith("[")) {
    const end = hop.indexOf("]");
    return end < 0 ? hop : hop.slice(1, end);
  }
  const colon = hop.indexOf(":");
  return colon >= 0 && colon === hop.lastIndexOf(":")
    ? hop.slice(0, colon)
    : hop;
}

/**
 * The key a client is limited by: its IPv4 address, or the /64 of its IPv6
 * address, since one IPv6 host usually holds a whole /64 and could
 * otherwise take a fresh address per connection.
 *
 * @param address A client address (see {@link TrustedProxies.clientAddress}).
 * @returns The key; the text itself when it is not an address.
 *
 * @example
 * ```ts
 * limitKey("2001:db8:1:2:3:4:5:6"); // "2001:db8:1:2::/64"
 * limitKey("192.0.2.7"); // "192.0.2.7"
 * ```
 */
export function limitKey(address: string): string {
  const parsed = parseAddress(address);
  if (parsed === undefined) return address;
  if (parsed.kind() === "ipv4") return parsed.toString();
  const parts = (parsed as ipaddr.IPv6).parts.slice(0, 4);
  return `${new ipaddr.IPv6([...parts, 0, 0, 0, 0]).toRFC5952String()}/64`;
}
