-- ARGV: ns, then field/value pairs: the table's settings. Only the run that owns the table calls
-- this: it writes them when the namespace has no table on this shard yet, and never changes an
-- existing one. Returns the stored settings (flat field/value list) for the caller to compare.
if redis.call('EXISTS', K_CONFIG) == 0 then
  redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
end
return redis.call('HGETALL', K_CONFIG)
