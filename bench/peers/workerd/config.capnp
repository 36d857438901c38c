# workerd config for bench/peers: one const per benchmarked worker, so the driver runs
#   workerd serve config.capnp helloConfig --socket-addr http=127.0.0.1:PORT
# (one worker per run, like every other peer).
using Workerd = import "/workerd/workerd.capnp";

const helloConfig :Workerd.Config = (
  services = [(name = "main", worker = .helloWorker)],
  sockets = [(name = "http", address = "127.0.0.1:8780", http = (), service = "main")],
);

const transformConfig :Workerd.Config = (
  services = [(name = "main", worker = .transformWorker)],
  sockets = [(name = "http", address = "127.0.0.1:8780", http = (), service = "main")],
);

const helloWorker :Workerd.Worker = (
  modules = [(name = "hello.js", esModule = embed "hello.js")],
  compatibilityDate = "2025-01-01",
);

const transformWorker :Workerd.Worker = (
  modules = [(name = "transform.js", esModule = embed "transform.js")],
  compatibilityDate = "2025-01-01",
);
