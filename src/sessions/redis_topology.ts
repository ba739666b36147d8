/**
 * Where the Redis session store's data lives, and how each command finds
 * it: one server (`REDIS_URL`), the master a set of Sentinels names
 * (`REDIS_SENTINELS`), or a Redis Cluster (`REDIS_CLUSTER_NODES`).
 *
 * The store sees all three through {@link Topology}: a client for
 * single-key commands (ioredis routes them, following `MOVED`/`ASK` in a
 * Cluster and the Sentinels' answer after a failover), each session's key,
 * and the masters ({@link Shard}s) that take the batched increment script,
 * each over one connection and with the ring of batch records that lives on
 * it. One server or Sentinel has one shard; a Cluster has one per master,
 * and a session's key carries its id as a hash tag
 * (`sockeye:session:{<id>}`) so it lives in one slot.
 *
 * A Cluster only runs a script whose declared keys share a slot. The batch
 * script declares one key, its master's ring, and takes the session keys
 * as arguments under the `allow-cross-slot-keys` flag (Redis 7): Redis still
 * refuses, key by key, any key this master does not serve, so a batch counts
 * only keys that live where it runs. That keeps one script call per master
 * per event-loop turn, however many slots its sessions hash to.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { Cluster, Redis, type RedisOptions } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { redactUrl, splitHostPort } from "../settings.ts";
import { StoreUnavailableError } from "./store.ts";

/** Key prefix of every session: `sockeye:session:<id>` (`{<id>}` in a Cluster). */
export const KEY_PREFIX = "sockeye:session:";

/**
 * Key prefix of a session's owner, `sockeye:owner:<id>`: the token subject
 * that created it, written with the count by the attach script.
 */
export const OWNER_PREFIX = "sockeye:owner:";

/** Key prefix of each store's rings of batch records. */
export const BATCHES_PREFIX = "sockeye:batches:";

/** Slots of a Redis Cluster. */
const SLOTS = 16384;

/** Where the session store's Redis is. */
export type RedisTarget =
  | {
    /** One server. */
    readonly kind: "server";
    /** `redis://` or `rediss://` URL (user, password and database in it). */
    readonly url: string;
  }
  | {
    /** The master that Sentinels name. */
    readonly kind: "sentinel";
    /** The Sentinels' `host:port`. */
    readonly sentinels: readonly string[];
    /** The master's name in Sentinel. */
    readonly name: string;
    /** Password of the Sentinels themselves. */
    readonly sentinelPassword?: string | undefined;
    /** ACL user of the master and replicas. */
    readonly username?: string | undefined;
    /** Password of the master and replicas. */
    readonly password?: string | undefined;
  }
  | {
    /** A Redis Cluster. */
    readonly kind: "cluster";
    /** Some nodes' `host:port`; the rest are discovered. */
    readonly nodes: readonly string[];
    /** ACL user of the nodes. */
    readonly username?: string | undefined;
    /** Password of the nodes. */
    readonly password?: string | undefined;
  };

/** One master that batches go to. */
export interface Shard {
  /** `host:port` of a Cluster master; `primary` for one server or Sentinel. */
  readonly id: string;
  /** The connection its batches go over, so they answer in order. */
  readonly conn: Redis;
  /** Key of this store's ring of batch records, in a slot this master serves. */
  readonly ring: string;
}

/** A Lua script with its SHA1, for `EVALSHA`. */
export interface LuaScript {
  /** The source. */
  readonly lua: string;
  /** Its SHA1 in hex, as `SCRIPT LOAD` answers. */
  readonly sha: string;
}

/**
 * Prepares a script for {@link evalScript}.
 *
 * @param lua The script's source.
 * @returns The source and its SHA1.
 */
export function luaScript(lua: string): LuaScript {
  return { lua, sha: createHash("sha1").update(lua).digest("hex") };
}

/**
 * Runs a script by its SHA1, and by its source when Redis does not have it
 * (`NOSCRIPT`: nothing ran, so sending it again is safe).
 *
 * @param conn The connection (or Cluster, which routes by the first key).
 * @param script The script.
 * @param args `numkeys`, the keys, then the arguments.
 * @returns The script's reply.
 * @throws Redis's error reply, or the connection's failure.
 */
export async function evalScript(
  conn: Redis | Cluster,
  script: LuaScript,
  args: ReadonlyArray<string | number>,
): Promise<unknown> {
  const [numKeys, ...rest] = args;
  try {
    return await conn.evalsha(script.sha, numKeys!, ...rest);
  } catch (error) {
    if (!isNoScript(error)) throw error;
    return await conn.eval(script.lua, numKeys!, ...rest);
  }
}

/**
 * Tells whether Redis answered `NOSCRIPT` (it has not cached the script).
 *
 * @param error What a command rejected with.
 * @returns `true` for `NOSCRIPT`.
 */
export function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith("NOSCRIPT");
}

/**
 * The store's view of its Redis: the client, each session's key, and the
 * masters the batches go to.
 */
export class Topology {
  /** Sends single-key commands to wherever their key lives. */
  readonly client: Redis | Cluster;
  /** Whether this is a Cluster (session keys hash-tagged, one shard per master). */
  readonly clustered: boolean;
  /** Fields for log lines naming the Redis, passwords hidden. */
  readonly describe: Readonly<Record<string, string>>;
  readonly #ringName: string;
  readonly #cluster: Cluster | undefined;
  readonly #single: Shard | undefined;
  /** Master `host:port` → its shard, for the slot map in force. */
  #shards = new Map<string, Shard>();

  /**
   * Creates the client; nothing connects until {@link connect}.
   *
   * @param target Where Redis is.
   * @param ringName This store's name in its ring keys (unique per process).
   * @param options ioredis options for every connection to a server.
   */
  constructor(target: RedisTarget, ringName: string, options: RedisOptions) {
    this.#ringName = ringName;
    this.clustered = target.kind === "cluster";
    if (target.kind === "cluster") {
      this.describe = { redis_cluster_nodes: target.nodes.join(",") };
      const { lazyConnect: _l, enableOfflineQueue: _o, ...nodeOptions } =
        options;
      const cluster = new Cluster(target.nodes.map(splitHostPort), {
        lazyConnect: true,
        enableOfflineQueue: false,
        // Never send a command again after its connection closed: it may
        // have run. Redirections (MOVED, ASK, TRYAGAIN) ran nothing.
        retryDelayOnFailover: 0,
        retryDelayOnClusterDown: 0,
        clusterRetryStrategy: options.retryStrategy ??
          ((times) => Math.min(times * 100, 2000)),
        // As on each node: the commands of one turn in one write per node.
        enableAutoPipelining: options.enableAutoPipelining,
        redisOptions: {
          ...nodeOptions,
          username: target.username,
          password: target.password,
        },
      });
      this.client = cluster;
      this.#cluster = cluster;
      // Node connections come and go with failovers and the slot map.
      for (const event of ["refresh", "+node", "-node"]) {
        cluster.on(event, () => this.#shards = new Map());
      }
      return;
    }
    let client: Redis;
    if (target.kind === "sentinel") {
      this.describe = {
        redis_sentinels: target.sentinels.join(","),
        redis_sentinel_name: target.name,
      };
      client = new Redis({
        ...options,
        sentinels: target.sentinels.map(splitHostPort),
        name: target.name,
        sentinelPassword: target.sentinelPassword,
        username: target.username,
        password: target.password,
        // Reconnect as soon as a Sentinel announces a new master, instead of
        // writing to the old one until it is demoted.
        failoverDetector: true,
      });
    } else {
      this.describe = { redis_url: redactUrl(target.url) };
      client = new Redis(target.url, options);
    }
    this.client = client;
    this.#single = {
      id: "primary",
      conn: client,
      ring: BATCHES_PREFIX + ringName,
    };
  }

  /**
   * A session's key.
   *
   * @param id The session id (`^[A-Za-z0-9_-]{1,64}$`, so no braces).
   * @returns `sockeye:session:<id>`, or `sockeye:session:{<id>}` in a Cluster.
   */
  key(id: string): string {
    return this.clustered ? `${KEY_PREFIX}{${id}}` : KEY_PREFIX + id;
  }

  /**
   * A session's owner key, in the same slot as its count.
   *
   * @param id The session id.
   * @returns `sockeye:owner:<id>`, or `sockeye:owner:{<id>}` in a Cluster.
   */
  ownerKey(id: string): string {
    return this.clustered ? `${OWNER_PREFIX}{${id}}` : OWNER_PREFIX + id;
  }

  /**
   * The Cluster slot of a key.
   *
   * @param key A key from {@link key}.
   * @returns Its slot (0–16383); 0 outside a Cluster.
   */
  slot(key: string): number {
    return this.clustered ? calculateSlot(key) : 0;
  }

  /**
   * The master serving a slot in the slot map in force.
   *
   * @param slot A slot from {@link slot}.
   * @returns Its shard; `undefined` when no connected master is known for it.
   */
  shardOf(slot: number): Shard | undefined {
    if (this.#single !== undefined) return this.#single;
    const id = this.#cluster!.slots[slot]?.[0];
    if (id === undefined) return undefined;
    return this.#shards.get(id) ?? this.#makeShard(id);
  }

  /**
   * Every master, with the slot map re-read first in a Cluster.
   *
   * @param refresh Whether to re-read the slot map (ioredis also does every
   *   5 s by itself).
   * @returns One shard per master.
   * @throws {StoreUnavailableError} When a slot has no master, or a master
   *   no connection.
   */
  async masters(refresh = true): Promise<Shard[]> {
    if (this.#single !== undefined) return [this.#single];
    if (refresh) await this.refresh();
    const slots = this.#cluster!.slots;
    const shards = new Map<string, Shard>();
    for (let slot = 0; slot < SLOTS; slot++) {
      const id = slots[slot]?.[0];
      const shard = id === undefined
        ? undefined
        : shards.get(id) ?? this.shardOf(slot);
      if (shard === undefined) {
        throw new StoreUnavailableError(
          `Redis Cluster has no reachable master for slot ${slot}` +
            (id === undefined ? "" : ` (${id})`),
        );
      }
      shards.set(shard.id, shard);
    }
    return [...shards.values()];
  }

  /** Re-reads the Cluster's slot map; resolves at once outside a Cluster. */
  refresh(): Promise<void> {
    const cluster = this.#cluster;
    if (cluster === undefined) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      cluster.refreshSlotsCache((error) => error ? reject(error) : resolve());
    }).then(() => {
      this.#shards = new Map();
    }, (error) => {
      throw new StoreUnavailableError(
        `Cannot read the Redis Cluster's slot map: ${(error as Error).message}`,
        { cause: error },
      );
    });
  }

  /**
   * The address of the server a shard's connection reaches now: a Sentinel
   * failover changes it behind the one shard.
   *
   * @param shard A shard.
   * @returns `host:port`.
   */
  server(shard: Shard): string {
    if (this.#cluster !== undefined) return shard.id;
    const stream = (shard.conn as unknown as {
      stream?: { remoteAddress?: string; remotePort?: number };
    }).stream;
    return stream?.remoteAddress === undefined
      ? shard.id
      : `${stream.remoteAddress}:${stream.remotePort}`;
  }

  /**
   * Drops the connection to a master that turned out to be a replica, so
   * the Sentinels are asked again; a Cluster re-reads its slot map instead.
   */
  reconnect(): void {
    if (this.#cluster !== undefined) this.refresh().catch(() => {});
    else (this.client as Redis).disconnect(true);
  }

  #makeShard(id: string): Shard | undefined {
    const cluster = this.#cluster!;
    const conn = cluster.nodes("master").find((node) =>
      `${node.options.host}:${node.options.port}` === id
    );
    if (conn === undefined) return undefined;
    // The ring's hash tag is the first number whose slot this master
    // serves: with N masters that takes about N tries.
    let tag = 0;
    while (cluster.slots[calculateSlot(String(tag))]?.[0] !== id) {
      if (++tag > 100 * SLOTS) return undefined;
    }
    const shard = {
      id,
      conn,
      ring: `${BATCHES_PREFIX}{${tag}}:${this.#ringName}`,
    };
    this.#shards.set(id, shard);
    return shard;
  }
}
