/**
 * The Lua scripts of the Redis session store, and the reply codes they share
 * with it.
 *
 * The increment and withdrawal scripts read `TIME` first and refuse the whole
 * call, changing nothing, past the deadline the store gives them on Redis's
 * clock (see `redis_store.ts`). They are safe under effects replication
 * (always on since Redis 7; Debian ships 7.0): replicas and the append-only
 * file receive the resulting `INCR`/`PEXPIREAT`/`HSET` in one `MULTI`/`EXEC`,
 * never the script or its `TIME`, so a replayed file or a promoted replica
 * holds exactly what the primary did.
 *
 * Each increment batch also records its counts in a small ring
 * (`sockeye:batches:<store id>`, or one per Cluster master, field `seq mod`
 * `MAX_IN_FLIGHT`, value `seq:counts`) in the same atomic script, which the
 * lookup script reads back and the withdrawal script deletes.
 *
 * @module
 */
import { luaScript } from "./redis_topology.ts";

/** What a script answers instead of running past its deadline. */
export const REFUSED: number = -2;

/** A count for a key its master does not serve (a Cluster slot moved). */
export const NOT_HERE: number = -3;

/** Replicas acknowledging a batch that did not ask (no `WAIT`). */
export const NOT_ASKED: number = -1;

// Redis's clock in ms, as Lua sees it. Writes after TIME need effects
// replication: the default since Redis 5 and the only mode since 7, asked
// for explicitly where the call still exists (3.2 to 7, a no-op from 7).
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)`;

// In a Cluster a script may touch keys beyond its declared ones, in other
// slots of the same master, only with this flag (Redis 7).
const CROSS_SLOT = "#!lua flags=allow-cross-slot-keys\n";

/**
 * KEYS[1] is the ring; the session keys are KEYS[2..] (one server), or
 * ARGV[6..] (Cluster: undeclared, in any slot of this master). ARGV: TTL ms,
 * deadline, ring field, record prefix "seq:", ring TTL ms. INCR + PEXPIRE
 * per key; -1 for a key holding no integer, -3 for one this master does not
 * serve; nothing at all past the deadline. An error before the first write
 * (READONLY on a demoted master, OOM) fails the call, so nothing is half
 * done; after it only pcall, so no error can leave a batch half done.
 */
function incrementManyLua(crossSlot: boolean): string {
  return `${crossSlot ? CROSS_SLOT : ""}${NOW}
if now > tonumber(ARGV[2]) then return ${REFUSED} end
local keys, from = ${crossSlot ? "ARGV, 6" : "KEYS, 2"}
local out = {}
local wrote = false
for i = from, #keys do
  local n = redis.pcall('INCR', keys[i])
  if type(n) == 'table' then
    local e = n.err or ''
    if string.find(e, 'non local key', 1, true) then
      out[i - from + 1] = ${NOT_HERE}
    elseif not wrote and not (string.find(e, 'WRONGTYPE', 1, true)
        or string.find(e, 'not an integer', 1, true)
        or string.find(e, 'overflow', 1, true)) then
      return redis.error_reply(e)
    else
      out[i - from + 1] = -1
    end
  else
    wrote = true
    redis.pcall('PEXPIRE', keys[i], ARGV[1])
    out[i - from + 1] = n
  end
end
redis.pcall('HSET', KEYS[1], ARGV[3], ARGV[4] .. table.concat(out, ','))
redis.pcall('PEXPIRE', KEYS[1], ARGV[5])
return out`;
}

// KEYS[1] is the ring; ARGV[1] the latest deadline of the batches asked
// about, ARGV[2..] their fields. Before that deadline has passed a batch
// could still run, so the answer is how many ms to wait; after, the records.
const LOOKUP_SCRIPT = `${NOW}
local deadline = tonumber(ARGV[1])
if now <= deadline then return deadline - now + 1 end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 2))`;

/**
 * KEYS[1] is the ring; ARGV[1] the deadline, then per orphan its batch's
 * ring field, record prefix "seq:" and count, highest count first per key;
 * the session keys are KEYS[2..] (one server) or follow in ARGV (Cluster).
 * Decrements a key still at that count whose batch record is still in the
 * ring: the orphan is then its latest number and in the data Redis holds,
 * so no acknowledged number is handed out again. Then deletes those
 * records, so running it twice withdraws once. Answers per orphan 1
 * (withdrawn), 0 (counted since: kept) or 2 (no record: lost with a master
 * that failed over, or withdrawn before, so not counted).
 */
function withdrawLua(crossSlot: boolean): string {
  return `${crossSlot ? CROSS_SLOT : ""}${NOW}
if now > tonumber(ARGV[1]) then return ${REFUSED} end
local n = ${crossSlot ? "(#ARGV - 1) / 4" : "(#ARGV - 1) / 3"}
local out = {}
local done, seen = {}, {}
for i = 1, n do
  local key = ${crossSlot ? "ARGV[1 + 3 * n + i]" : "KEYS[i + 1]"}
  local field, prefix = ARGV[3 * i - 1], ARGV[3 * i]
  local record = redis.pcall('HGET', KEYS[1], field)
  if type(record) ~= 'string' or string.sub(record, 1, #prefix) ~= prefix then
    out[i] = 2
  else
    if not seen[field] then
      seen[field] = true
      done[#done + 1] = field
    end
    if redis.pcall('GET', key) == ARGV[3 * i + 1] then
      redis.pcall('DECR', key)
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
if #done > 0 then redis.pcall('HDEL', KEYS[1], unpack(done)) end
return out`;
}

// Creates the session at 0 when missing; answers {created, count}.
// KEYS[1] is the count, KEYS[2] the owner (same hash tag in a Cluster);
// ARGV: TTL ms, owner ('' without authentication), owner TTL ms. Creates the
// session at 0 when missing, its owner with it (a stale owner key is
// dropped); an existing session attaches only for its owner when one is
// given. Answers {created, count}, or {-1, ''} for another subject's
// session, changing nothing.
const ATTACH_SCRIPT = `
local created = redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1])
if created then
  if ARGV[2] == '' then redis.call('DEL', KEYS[2])
  else redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
  return {1, '0'}
end
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {-1, ''} end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {0, redis.call('GET', KEYS[1])}`;

/**
 * The drain's totals on a Cluster master: ARGV holds session keys in any
 * slot it serves (undeclared; it writes nothing). Per key its count, false
 * when missing, -3 for one this master does not serve (its slot moved).
 */
const GET_MANY_CLUSTER = `#!lua flags=no-writes,allow-cross-slot-keys
local out = {}
for i = 1, #ARGV do
  local v = redis.pcall('GET', ARGV[i])
  if type(v) == 'table' and v.err then
    if not string.find(v.err, 'non local key', 1, true) then
      return redis.error_reply(v.err)
    end
    v = ${NOT_HERE}
  end
  out[i] = v
end
return out`;

/**
 * The store's scripts, compiled once: `server` for one server or Sentinel
 * (session keys declared), `cluster` for a Cluster master (session keys
 * undeclared, in any slot it serves; `getMany` reads the drain's totals),
 * `lookup` and `attach` for both.
 */
export const SCRIPTS = {
  server: {
    incrementMany: luaScript(incrementManyLua(false)),
    withdraw: luaScript(withdrawLua(false)),
  },
  cluster: {
    incrementMany: luaScript(incrementManyLua(true)),
    withdraw: luaScript(withdrawLua(true)),
    getMany: luaScript(GET_MANY_CLUSTER),
  },
  lookup: luaScript(LOOKUP_SCRIPT),
  attach: luaScript(ATTACH_SCRIPT),
};
