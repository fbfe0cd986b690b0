-- ARGV: ns. The number of groups the shard holds (admission control asks this often: keep it cheap).
return redis.call('ZCARD', K_FIFO)
