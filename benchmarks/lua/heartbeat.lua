-- Heartbeats from many devices: every request carries the token of another seeded device.
-- Tokens are deterministic (seed.py: device_token), so nothing has to be shipped to wrk.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local devices = tonumber(os.getenv("BENCH_DEVICES") or "100000")
local path = os.getenv("BENCH_PATH") or "/api/device/v1/heartbeat"
local body = '{"firmware_version": "v1.0.0", "recording": false, "battery": 80, "network": "wifi"}'
-- A stride prime to the device count walks every device once per round, far apart in the index.
local stride = 7919
local index = 0

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  index = math.random(0, devices - 1)
  -- BENCH_START: continue a walk where the previous run stopped (the warm-up visits every device once)
  if os.getenv("BENCH_START") then index = tonumber(os.getenv("BENCH_START")) % devices end
end

function request()
  index = (index + stride) % devices
  local token = string.format("bota_dt_bench%038d", index + 1)
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
