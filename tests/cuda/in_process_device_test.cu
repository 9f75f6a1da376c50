// The in-process backend over device memory: P ranks as threads sharing one GPU, each on its own
// stream; the same cases as the host tests, plus what only a GPU build can check.
#include <seqpar_test/collective_cases.hpp>

#include <seqpar/tensor.hpp>
#include <seqpar/zero/adamw.hpp>
#include <seqpar/zero/sharded_parameters.hpp>

using seqpar::memory_space;

TEST_CASE_TEMPLATE("in_process over device memory: every operation, P in {1,2,3,4,8}", T, float, __half,
                   __nv_bfloat16, std::int64_t) {
  seqpar_test::check_every_operation<T>(memory_space::device);
}

TEST_CASE("in_process over device memory: split") { seqpar_test::check_split(memory_space::device); }

TEST_CASE("in_process over device memory: bad input throws before any copy is enqueued") {
  std::vector<std::vector<float>> after(2);
  std::vector<int> threw(2, 0);
  seqpar::run_in_process(2, memory_space::device, [&](seqpar::in_process_communicator& comm) {
    seqpar_test::buffer<float> send(memory_space::device, std::vector<float>(comm.rank() == 0 ? 3 : 4, 1.0f));
    seqpar_test::buffer<float> recv(memory_space::device, std::vector<float>(4, seqpar_test::poison<float>()));
    seqpar_test::rank_stream stream(memory_space::device);
    try {
      comm.all_to_all(send.cspan(), recv.span(), 2, stream);
    } catch (const seqpar::error&) {
      threw[comm.rank()] = 1;
    }
    stream.sync();
    after[comm.rank()] = recv.values();
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(threw[r] == 1);
    CHECK(seqpar_test::first_mismatch(after[r], std::vector<float>(4, seqpar_test::poison<float>())) == -1);
  }
}

TEST_CASE("kernels compiled by nvcc live in a namespace that names the target architectures") {
  const std::string name = SEQPAR_DETAIL_STR(SEQPAR_KERNEL_NAMESPACE);
  CHECK(name.rfind("kernels_sm", 0) == 0);
  CHECK(name != "kernels_host");
}

TEST_CASE_TEMPLATE(
    "sharded_parameters over device memory: gather, reduce_scatter, the gradient norm and AdamW match the host", T,
    float, __half, __nv_bfloat16) {
  const std::vector<std::vector<seqpar::parameter_spec>> units{{{13}, {7, false}}, {{5}}, {{67}}};
  for (int P : {1, 3, 4}) {
    CAPTURE(P);
    const seqpar::parameter_partition part(units, P);
    // Host and device runs of the same calls (the host run is checked against plain references in
    // tests/host/zero_test.cpp); they agree to rounding (nvcc may fuse AdamW's multiply-adds).
    auto run = [&](memory_space where) {
      std::vector<std::vector<float>> out(P);
      seqpar::run_in_process(P, where, [&](seqpar::in_process_communicator& comm) {
        seqpar_test::rank_stream stream(where);
        seqpar::sharded_parameters params(comm, part);
        seqpar::adamw opt(params, {.learning_rate = 0.1f, .weight_decay = 0.5f});
        std::vector<float> gathered;
        for (int u = 0; u < part.units(); ++u) {
          std::vector<float> full(part.unit_elements(u));
          for (std::size_t i = 0; i < full.size(); ++i) full[i] = 0.01f * float(i) - 0.2f * float(u);
          seqpar_test::buffer<float> f(where, full);
          params.load(u, f.cspan(), stream);
          auto grads = params.template gradient_buffer<T>(u, stream);
          std::vector<T> g(grads.elements().size());
          for (std::size_t i = 0; i < g.size(); ++i)
            g[i] = seqpar::from_float<T>(float(comm.rank() + 1) * float(i % 5));
          seqpar_test::buffer<T> gb(where, g);
          if (where == memory_space::device)
            SEQPAR_CUDA_TRY(cudaMemcpyAsync(grads.elements().data(), gb.data(), g.size() * sizeof(T), cudaMemcpyDefault,
                                            stream));
          else std::copy(g.begin(), g.end(), grads.elements().begin());
          params.reduce_scatter(std::move(grads), stream);
        }
        gathered.push_back(static_cast<float>(params.gradient_norm(stream)));
        params.scale_gradients(0.5f, stream);
        opt.step(stream);
        for (int u = 0; u < part.units(); ++u) {
          const auto unit = params.template gather<T>(u, stream);
          std::vector<T> host(unit.elements().size());
          if (where == memory_space::device) {
            SEQPAR_CUDA_TRY(cudaMemcpyAsync(host.data(), unit.elements().data(), host.size() * sizeof(T),
                                            cudaMemcpyDefault, stream));
            stream.sync();
          } else {
            std::copy(unit.elements().begin(), unit.elements().end(), host.begin());
          }
          for (T x : host) gathered.push_back(seqpar::to_float(x));
        }
        stream.sync();
        out[comm.rank()] = gathered;
      });
      return out;
    };
    const auto host = run(memory_space::host), device = run(memory_space::device);
    const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-2;
    for (int r = 0; r < P; ++r) {
      REQUIRE(device[r].size() == host[r].size());
      double worst = 0;
      for (std::size_t i = 0; i < host[r].size(); ++i)
        worst = std::max(worst,
                         std::fabs(double(device[r][i]) - host[r][i]) / std::max(1e-3, std::fabs(double(host[r][i]))));
      CHECK(worst < tolerance);
    }
  }
}

TEST_CASE("default_memory_resource keeps the device pool's freed scratch across synchronisations") {
  int device = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  cudaMemPool_t pool = nullptr;
  REQUIRE(cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess);
  const seqpar::default_memory_resource resource;
  void* p = resource.allocate_async(1 << 20, seqpar::memory_space::device, nullptr);
  resource.deallocate_async(p, 1 << 20, seqpar::memory_space::device, nullptr);
  REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
  std::uint64_t threshold = 0, reserved = 0;
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) == cudaSuccess);
  CHECK(threshold == resource.pool_release_threshold);
  REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess);
  CHECK(reserved >= (1u << 20));  // the freed MiB stayed with the pool through the synchronisation
}
