-- wrk script for bench/cluster.sh: bench/durability/post_event.lua (the same unsigned 1 KiB
-- POST, its init() and its DUR_RESULT line from done()), with each wrk thread sent to one of
-- the instances in turn.
--
-- Usage: CLUSTER_TARGETS="127.0.0.1:PORT1 127.0.0.1:PORT2" \
--          wrk -t2 -c64 ... -s bench/cluster/spread.lua http://127.0.0.1:PORT1/in -- BODY_FILE
--
-- Thread i connects to target ((i - 1) mod #targets) + 1 (wrk gives each thread
-- connections/threads connections), so with as many threads as targets (or a multiple) every
-- instance gets the same share of the connections. The request line and Host header come
-- from the URL; only the address a thread connects to changes. The targets come from the
-- environment because setup() runs before init() and does not see the script's arguments.

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(here .. "/../durability/post_event.lua")

local targets = {}
for t in (os.getenv("CLUSTER_TARGETS") or ""):gmatch("%S+") do
   targets[#targets + 1] = t
end

local threads = 0

function setup(thread)
   if #targets == 0 then
      error("spread.lua needs CLUSTER_TARGETS=\"HOST:PORT ...\" in the environment")
   end
   threads = threads + 1
   local target = targets[(threads - 1) % #targets + 1]
   local host, port = target:match("^(.*):(%d+)$")
   if not host then
      error("CLUSTER_TARGETS: expected HOST:PORT, got " .. target)
   end
   local addrs = wrk.lookup(host, port)
   if not addrs or #addrs == 0 then
      error("CLUSTER_TARGETS: cannot resolve " .. target)
   end
   thread.addr = addrs[1]
end
