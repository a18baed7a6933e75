# Shared by the HTTP load scripts (sourced, not run): building the front processes, checks that servers are really the
# ones started, and CPU readings.

# The ports must be free: a server left over from another run would answer in place of the one about to start (which
# then fails to bind), and every figure would describe the wrong process.
require_free_ports() {
  local port
  for port in "$@"; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
      echo "port $port is already in use on 127.0.0.1: stop what listens there first" >&2; exit 1
    fi
  done
}

# Waits until each port answers (any HTTP answer), then checks that each started process is still alive.
# Usage: wait_for_servers "PORT..." "PID..."
wait_for_servers() {
  local port pid
  for port in $1; do
    for _ in $(seq 1 100); do
      curl -s -o /dev/null "http://127.0.0.1:$port/" && break
      sleep 0.1
    done
  done
  for pid in $2; do
    kill -0 "$pid" 2>/dev/null || { echo "a server exited at start (pid $pid): see its output by running it by hand" >&2; exit 1; }
  done
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system CPU of a process, in clock ticks
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Builds the gateway, the load generator and the YARP proxy (Release) and names their executables PGW, LOADGEN, YARP.
build_front_processes() {
  local project
  for project in src/PipelineGateway.Cli benchmarks/PipelineGateway.LoadGen benchmarks/PipelineGateway.YarpProxy; do
    dotnet build -c Release "$project" >/dev/null
  done
  PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
  LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen
  YARP=benchmarks/PipelineGateway.YarpProxy/bin/Release/net10.0/pgw-yarp
}
