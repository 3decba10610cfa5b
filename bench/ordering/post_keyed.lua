-- wrk script for bench/ordering.sh: POSTs exactly EVENTS unsigned JSON events, then ends wrk.
--
-- Usage: wrk -t1 -c32 -d300s -s bench/ordering/post_keyed.lua http://HOST:PORT/in -- EVENTS KEYS PAD_BYTES
--
-- Event n (0, 1, ...) is {"key":"kNNN","seq":n,"pad":"xxx..."} with key n mod KEYS (round-robin
-- over k000 .. k(KEYS-1)) and PAD_BYTES of padding. One wrk thread only (-t1): the counts are
-- that thread's. Once EVENTS POSTs were sent, each connection that is free asks for
-- GET /__bench_done instead (not an event: the gateway answers 404 and stores nothing) until every
-- POST has its answer, so no POST is cut off by the end of the run. Then the thread stops and
-- sends wrk itself SIGINT (as Ctrl-C would): wrk's main thread otherwise sleeps out the whole -d
-- duration; on SIGINT it ends at once and reports (done() runs). -d is only the bound.
-- done() prints one parseable line starting with "ORD_RESULT" (durations in microseconds).

posts = 0     -- POSTs sent
answered = 0  -- answers to POSTs (anything but the 404 of the done marker)
accepted = 0  -- of those, 202

local events, keys, pad, path
local stopping = false
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   events = tonumber(args[1])
   keys = tonumber(args[2])
   pad = string.rep("x", tonumber(args[3]) or 0)
   if not events or not keys or events < 1 or keys < 1 then
      error("post_keyed.lua needs: -- EVENTS KEYS PAD_BYTES")
   end
   path = wrk.path
end

-- wrk calls request() once before the run, in this thread's state, to check what it returns
-- (script_verify_request); that request is never sent, so it must not count.
local verified = false

function request()
   if not verified then
      verified = true
      return wrk.format("GET", "/__bench_done", {})
   end
   if posts >= events then
      return wrk.format("GET", "/__bench_done", {})
   end
   local body = string.format('{"key":"k%03d","seq":%d,"pad":"%s"}', posts % keys, posts, pad)
   posts = posts + 1
   return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
   if status ~= 404 then
      answered = answered + 1
      if status == 202 then
         accepted = accepted + 1
      end
   end
   if answered >= events and not stopping then
      stopping = true
      wrk.thread:stop()
      -- The shell io.popen starts is wrk's child: $PPID is wrk. (Not os.execute: system() ignores
      -- SIGINT in the whole process while its command runs.) Once more a second later, in case
      -- the first came before wrk's main thread was sleeping, if wrk is still there.
      io.popen("kill -INT $PPID; (sleep 1; [ \"$(cat /proc/$PPID/comm 2>/dev/null)\" = wrk ] && "
         .. "kill -INT $PPID) >/dev/null 2>&1 &"):close()
   end
end

function done(summary, latency, requests)
   local p, a, c = 0, 0, 0
   for _, t in ipairs(threads) do
      p = p + t:get("posts")
      a = a + t:get("answered")
      c = c + t:get("accepted")
   end
   local e = summary.errors
   io.write(string.format(
      "ORD_RESULT posts=%d answered=%d accepted=%d requests=%d post_us=%d p50_us=%d p99_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
      p, a, c, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.timeout))
end
