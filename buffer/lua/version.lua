-- ARGV: ns, learner version, rewind (0|1). The learner's version as the shard knows it: it only
-- grows (a sample call raises it too), except on a rewind to a restored checkpoint, which also
-- evicts every group made by the lost timeline (newest token newer than the version).
-- Returns the number of groups evicted.
local err = load_config()
if err then return err end
local version, rewind = tonumber(ARGV[2]), ARGV[3] == '1'
local previous = tonumber(redis.call('HGET', K_STATS, 'learner_version'))
if rewind or not previous or version > previous then
  redis.call('HSET', K_STATS, 'learner_version', version)
end
if not rewind then return 0 end
local evicted, changes = 0, pending()
for _, gid in ipairs(redis.call('ZRANGE', K_FIFO, 0, -1)) do
  if tonumber(redis.call('HGET', k_meta(gid), 'vmax')) > version then
    remove_item(gid, 'rewound', changes)
    evicted = evicted + 1
  end
end
commit(changes)
return evicted
