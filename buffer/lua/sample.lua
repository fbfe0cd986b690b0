-- ARGV: ns, n, learner version, u_1..u_n (uniforms in [0, 1) from the client's seeded RNG).
-- Draws up to n groups with replacement (fifo / lifo: the oldest / newest distinct groups), as many as the
-- rate limiter allows. Returns {'ok', size, mass, draws, removed} where draws is a flat list
-- of (gid, leaf, mass at draw, times sampled, priority) and removed a flat list of (gid, bytes)
-- for the groups this call removed (max_times_sampled); or {'empty'|'blocked', inserts, samples, size}.
-- The client fetches the other payloads with one MGET: big replies through Lua cost two copies.
local err = load_config()
if err then return err end
local n, learner_version = tonumber(ARGV[2]), tonumber(ARGV[3])
local previous = tonumber(redis.call('HGET', K_STATS, 'learner_version'))
if not previous or learner_version > previous then
  redis.call('HSET', K_STATS, 'learner_version', learner_version)
end
evict_stale(learner_version)

local st = limiter_state()
if st.size == 0 or tree_total() <= 0 then return limiter_reply('empty', st) end
local allowed = 0
if st.size >= cfg.min_size then
  allowed = math.min(n, math.floor(st.inserts * cfg.spi - st.samples - cfg.min_diff))
end
if allowed < 1 then return limiter_reply('blocked', st) end

local ordered = nil  -- fifo / lifo: the groups to return, in insertion order or its reverse
if cfg.selector == 'fifo' then
  ordered = redis.call('ZRANGE', K_FIFO, 0, allowed - 1)
  allowed = #ordered
elseif cfg.selector == 'lifo' then
  ordered = redis.call('ZRANGE', K_FIFO, 0, allowed - 1, 'REV')
  allowed = #ordered
end
-- (group id, leaf value) of draws first..allowed under the tree as it is now
local function draw_rest(first, total)
  local gids, leaves, us = {}, {}, {}
  if ordered then
    for i = first, allowed do gids[#gids + 1], leaves[#leaves + 1] = ordered[i], 1 end
    return gids, leaves
  end
  for i = first, allowed do us[#us + 1] = tonumber(ARGV[3 + i]) * total end
  local slots
  slots, leaves = tree_find_many(us, total)
  return hmget_all(K_SLOTS, slots), leaves
end

local draws, removed = {}, {}
local i = 1
while i <= allowed do
  local total = tree_total()
  if total <= 0 then break end
  local gids, leaves = draw_rest(i, total)
  for k = 1, #gids do
    local gid = gids[k]
    local meta = k_meta(gid)
    local times = redis.call('HINCRBY', meta, 't', 1)
    local priority = redis.call('HGET', meta, 'p')
    for _, field in ipairs({gid, fmt(leaves[k]), fmt(total), times, priority}) do draws[#draws + 1] = field end
    i = i + 1
    if cfg.max_times > 0 and times >= cfg.max_times then
      removed[#removed + 1] = gid
      removed[#removed + 1] = redis.call('GET', k_payload(gid))
      local changes = pending()
      remove_item(gid, 'max_times_sampled', changes)
      commit(changes)
      break  -- the tree changed: the draws after this one descend it again
    end
  end
end
redis.call('HINCRBY', K_STATS, 'samples', #draws / 5)
return {'ok', redis.call('ZCARD', K_FIFO), fmt(tree_total()), draws, removed}
