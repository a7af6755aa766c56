-- GET a path drawn at random (per request) from the file named by the first script argument,
-- one path per line; `done` prints the exact numbers as one BENCH_JSON line for bench/wrk.py.
-- An optional second argument names a file of extra request headers, one `Name: value` a line
-- (e.g. `Authorization: Bearer <token>`): a file, so the token never shows in argv or logs.
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

function init(args)
   paths = {}
   for line in io.lines(args[1]) do
      if #line > 0 then paths[#paths + 1] = line end
   end
   if #paths == 0 then error("no paths in " .. args[1]) end
   math.randomseed(os.time() * 1000 + tid)
   headers = { ["Accept"] = "application/fhir+json" }
   if args[2] then
      for line in io.lines(args[2]) do
         if #line > 0 then
            local name, value = line:match("^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*(.-)[ \t]*$")
            if not name then error("not a `Name: value` header line in " .. args[2]) end
            headers[name] = value
         end
      end
   end
end

function request()
   return wrk.format("GET", paths[math.random(#paths)], headers)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
      latency.max, latency.mean))
end
