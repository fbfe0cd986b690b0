-- ARGV: ns, then field/value pairs. Structural fields (tree base, capacity, selector, alpha)
-- are written once per namespace and returned for the client to compare; policy fields
-- (remover, limits, limiter) take the latest client's values.
local structural = {base = true, capacity = true, selector = true, alpha = true}
local existing = {}
local stored = redis.call('HGETALL', K_CONFIG)
for i = 1, #stored, 2 do existing[stored[i]] = stored[i + 1] end
for i = 2, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if not (structural[field] and existing[field]) then
    redis.call('HSET', K_CONFIG, field, value)
  end
end
return redis.call('HMGET', K_CONFIG, 'base', 'capacity', 'selector', 'alpha')
