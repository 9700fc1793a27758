// Bindings of the tensor-parallel transport (csrc/net/): the coordinator and
// worker links, the even split and the PeerError exception.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "../engine/from_file.h"
#include "../engine/model.h"
#include "../engine/shard_slice.h"
#include "../net/coordinator.h"
#include "../net/handshake.h"
#include "../net/worker.h"

namespace py = pybind11;

namespace edgelut::python {

namespace {
using net::Coordinator;
using net::WorkerLink;

net::LinkOptions link_options(const std::string& libzmq, bool insecure, const std::string& public_key,
                              const std::string& secret_key, const std::string& server_key, double timeout,
                              const std::string& sync) {
  net::LinkOptions l;
  l.libzmq = libzmq;
  l.keys.insecure = insecure;
  l.keys.public_key = public_key;
  l.keys.secret_key = secret_key;
  l.keys.server_key = server_key;
  l.timeout_s = timeout;
  l.sync = net::sync_mode_from_name(sync);
  return l;
}

std::shared_ptr<Coordinator> make_coordinator(const std::string& libzmq, const std::string& listen, int ranks,
                                              bool insecure, const std::string& public_key,
                                              const std::string& secret_key, std::set<std::string> allowed_keys,
                                              double timeout, const std::string& sync,
                                              std::map<std::string, std::string> expect,
                                              std::vector<std::string> rank_specs, int64_t max_values,
                                              int64_t max_tokens) {
  net::CoordinatorOptions o;
  o.link = link_options(libzmq, insecure, public_key, secret_key, "", timeout, sync);
  o.listen = listen;
  o.ranks = ranks;
  o.allowed_keys = std::move(allowed_keys);
  o.expect = std::move(expect);
  o.rank_specs = std::move(rank_specs);
  o.max_values = max_values;
  o.max_tokens = max_tokens;
  return std::make_shared<Coordinator>(std::move(o));
}

std::shared_ptr<WorkerLink> make_worker(const std::string& libzmq, const std::string& connect, bool insecure,
                                        const std::string& public_key, const std::string& secret_key,
                                        const std::string& server_key, double timeout, double join_timeout,
                                        std::map<std::string, std::string> hello) {
  net::WorkerOptions o;
  o.link = link_options(libzmq, insecure, public_key, secret_key, server_key, timeout, "fp32");
  o.connect = connect;
  o.hello = std::move(hello);
  o.join_timeout_s = join_timeout;
  return std::make_shared<WorkerLink>(std::move(o));
}

py::dict coordinator_stats(const Coordinator& c) {
  const net::LinkStats s = c.stats();
  py::dict d;
  d["evals"] = s.evals;
  d["all_reduces"] = s.all_reduces;
  d["hidden_passes"] = s.hidden_passes;
  d["comm_s"] = s.comm_s;
  d["bytes_sent"] = s.bytes_sent;
  d["bytes_received"] = s.bytes_received;
  return d;
}

py::dict worker_stats(const WorkerLink& w) {
  const net::WorkerStats s = w.stats();
  py::dict d;
  d["evals"] = s.evals;
  d["all_reduces"] = s.all_reduces;
  d["compute_s"] = s.compute_s;
  d["comm_s"] = s.comm_s;
  d["bytes_sent"] = s.bytes_sent;
  d["bytes_received"] = s.bytes_received;
  return d;
}
}  // namespace

void register_net(py::module_& m) {
  py::register_exception<net::PeerError>(m, "PeerError", PyExc_ConnectionError);
  m.def("even_shard", &even_shard, py::arg("config"), py::arg("rank"), py::arg("ranks"),
        "Rank's even share of kv heads and FFN columns (tile-aligned).");
  m.def(
      "shard_text", [](const ShardSpec& s, const Config& c) { return shard_text(s.resolved(c)); }, py::arg("shard"),
      py::arg("config"));

  m.def(
      "describe_shard",
      [](const std::string& path, int rank, int ranks, std::optional<ShardSpec> shard, int64_t n_ctx,
         int64_t prefill_chunk) {
        ModelFile mf(path, false);
        const Config c = config_from_file(mf);
        EngineOptions o;
        o.n_ctx = n_ctx;
        o.prefill_chunk = prefill_chunk;
        const bool shard_file = mf.find("edgelut.shard.world_size") && mf.get_int("edgelut.shard.world_size") > 1;
        const ShardSpec s = shard ? *shard : shard_file ? shard_from_file(mf, c) : even_shard(c, rank, ranks);
        return net::describe_shard(mf, c, s, rank, ranks, o);
      },
      py::arg("path"), py::arg("rank"), py::arg("ranks"), py::arg("shard") = py::none(), py::arg("n_ctx") = 2048,
      py::arg("prefill_chunk") = 64, "The tensor-parallel handshake fields of a device serving this model file.");

  py::class_<Coordinator, Communicator, std::shared_ptr<Coordinator>>(m, "Coordinator")
      .def(py::init(&make_coordinator), py::kw_only(), py::arg("libzmq"), py::arg("listen"), py::arg("ranks"),
           py::arg("insecure"), py::arg("public_key"), py::arg("secret_key"), py::arg("allowed_keys"),
           py::arg("timeout"), py::arg("sync"), py::arg("expect"), py::arg("rank_specs"), py::arg("max_values"),
           py::arg("max_tokens"))
      .def_property_readonly("endpoint", &Coordinator::endpoint)
      .def_property_readonly("ranks", &Coordinator::ranks)
      .def("wait_for_workers", &Coordinator::wait_for_workers, py::arg("timeout"),
           py::call_guard<py::gil_scoped_release>())
      .def("members", &Coordinator::members)
      .def("stats", &coordinator_stats)
      .def("reset_stats", &Coordinator::reset_stats)
      .def("close", &Coordinator::close);

  py::class_<WorkerLink, Communicator, std::shared_ptr<WorkerLink>>(m, "WorkerLink")
      .def(py::init(&make_worker), py::kw_only(), py::arg("libzmq"), py::arg("connect"), py::arg("insecure"),
           py::arg("public_key"), py::arg("secret_key"), py::arg("server_key"), py::arg("timeout"),
           py::arg("join_timeout"), py::arg("hello"))
      .def("serve", &WorkerLink::serve, py::arg("engine"), py::call_guard<py::gil_scoped_release>())
      .def("stop", &WorkerLink::stop)
      .def("stats", &worker_stats);
}

}  // namespace edgelut::python
