-- ARGV: ns. The table's settings (flat field/value list; empty when this shard has no table for ns).
-- Clients read, never write, them.
return redis.call('HGETALL', K_CONFIG)
