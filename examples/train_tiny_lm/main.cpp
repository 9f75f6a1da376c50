// train_tiny_lm: a small byte-level decoder-only language model trained on the licence texts of
// the machine, with its attention sequence-parallel (Ulysses, LASP or the 2-D Ulysses x ring
// layer) over a DP x SP mesh and its parameters, gradients and AdamW state sharded ZeRO-3-style
// over every rank. Ranks are threads of this process (--dp, --sp) or MPI processes (--mpi).
//
// --parity 1x2,1x4,2x2 trains the one-rank model and then each DP x SP mesh in this process, and
// checks that every step's loss matches the one-rank run to within --tolerance (relative).
#include <train_tiny_lm/trainer.hpp>

#if SEQPAR_HAS_MPI
#include <seqpar/comm/mpi.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
using tiny_lm::run_options;
using tiny_lm::step_record;

struct program_options {
  run_options run;
  std::string text = "/usr/share/common-licenses";
  std::string parity;      // meshes "DPxSP,..." to compare with one rank
  std::string log;         // CSV of every step's loss
  double tolerance = 1e-4;
  bool mpi = false;
  bool quiet = false;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: train_tiny_lm [--attention ulysses|lasp|ring2d] [--dp N] [--sp N] [--ranks N] [--steps N]\n"
               "       [--batch B] [--seq S] [--dim D] [--layers L] [--heads H] [--kv-heads K] [--head-dim E]\n"
               "       [--hidden F] [--qk-norm on|off] [--lr X] [--clip X] [--seed N] [--text DIR]\n"
               "       [--parity DPxSP,...] [--tolerance X] [--log FILE] [--mpi] [--quiet]\n",
               why);
  std::exit(2);
}

program_options parse(int argc, char** argv) {
  program_options p;
  auto& r = p.run;
  int ranks = 0;
  bool kv_given = false, qk_given = false, lr_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--attention") r.attention = tiny_lm::attention_kind_of(value());
    else if (a == "--dp") r.dp = std::stoi(value());
    else if (a == "--sp") r.sp = std::stoi(value());
    else if (a == "--ranks") ranks = std::stoi(value());
    else if (a == "--steps") r.steps = std::stoi(value());
    else if (a == "--batch") r.batch = std::stoll(value());
    else if (a == "--seq") r.seq = std::stoll(value());
    else if (a == "--dim") r.model.dim = std::stoi(value());
    else if (a == "--layers") r.model.layers = std::stoi(value());
    else if (a == "--heads") r.model.heads = std::stoi(value());
    else if (a == "--kv-heads") r.model.kv_heads = std::stoi(value()), kv_given = true;
    else if (a == "--head-dim") r.model.head_dim = std::stoi(value());
    else if (a == "--hidden") r.model.hidden = std::stoi(value());
    else if (a == "--lr") r.learning_rate = std::stof(value()), lr_given = true;
    else if (a == "--seed") r.seed = std::stoull(value());
    else if (a == "--clip") r.clip = std::stod(value());
    else if (a == "--qk-norm") r.model.qk_norm = value() == "on", qk_given = true;
    else if (a == "--text") p.text = value();
    else if (a == "--parity") p.parity = value();
    else if (a == "--tolerance") p.tolerance = std::stod(value());
    else if (a == "--log") p.log = value();
    else if (a == "--mpi") p.mpi = true;
    else if (a == "--quiet") p.quiet = true;
    else usage(("unknown option " + a).c_str());
  }
  if (ranks > 0 && r.dp * r.sp != ranks) {
    if (r.dp == 1 && r.sp == 1) r.sp = ranks;
    else usage("--ranks: expected dp * sp");
  }
  // LASP's linear attention has one key and value head per query head, and needs no QK-norm (its
  // decays bound its sums); it trains stably (rounding differences between meshes stay small) at a
  // lower peak learning rate than softmax attention.
  if (r.attention == tiny_lm::attention_kind::lasp) {
    if (!kv_given) r.model.kv_heads = r.model.heads;
    if (!qk_given) r.model.qk_norm = false;
    if (!lr_given) r.learning_rate = 2e-3f;
  }
  return p;
}

const char* name_of(tiny_lm::attention_kind k) {
  return k == tiny_lm::attention_kind::ulysses ? "ulysses" : k == tiny_lm::attention_kind::lasp ? "lasp" : "ring2d";
}

double kib(std::size_t bytes) { return static_cast<double>(bytes) / 1024.0; }

// The progress line of one step.
void print_step(const run_options& o, const step_record& s) {
  const double tokens = static_cast<double>(o.batch * o.seq);
  std::printf(
      "%-7s dp=%d sp=%d step %4d  loss %.6f  |g| %.3f  tokens/s %7.0f  held/rank KiB: params %.1f grads %.1f "
      "adamw %.1f gathered-peak %.1f\n",
      name_of(o.attention), o.dp, o.sp, s.step, s.loss, s.gradient_norm, tokens / s.seconds, kib(s.held.parameters),
      kib(s.held.gradients), kib(s.optimizer_bytes), kib(s.held.gathered_peak));
  std::fflush(stdout);
}

// The bytes-per-rank line of a run against the same model unsharded (fp32 parameters, gradients
// and two AdamW moments on every rank: 16 bytes per parameter).
void print_memory(const run_options& o, const step_record& s) {
  const auto elements = seqpar::parameter_partition(tiny_lm::parameter_units(o.model), 1).elements();
  const std::size_t sharded = s.held.parameters + s.held.gradients + s.optimizer_bytes;
  std::printf("memory  dp=%d sp=%d ranks=%d  per rank: params %.1f KiB, grads %.1f KiB, adamw %.1f KiB, total %.1f KiB "
              "+ gathered peak %.1f KiB; unsharded model: %.1f KiB (%lld parameters)\n",
              o.dp, o.sp, o.dp * o.sp, kib(s.held.parameters), kib(s.held.gradients), kib(s.optimizer_bytes),
              kib(sharded), kib(s.held.gathered_peak), kib(16 * static_cast<std::size_t>(elements)),
              static_cast<long long>(elements));
}

// Every step's loss of a run, its first step's gradient and its last step; record() also prints
// the step's line (unless quiet) and logs its loss.
struct run_result {
  std::vector<double> losses;
  std::vector<float> first_gradient;
  step_record last;
  void record(const run_options& o, const step_record& s, bool quiet, std::FILE* log) {
    losses.push_back(s.loss);
    if (s.step == 1) first_gradient = s.gradient;
    last = s;
    if (!quiet) print_step(o, s);
    if (log) std::fprintf(log, "%s,%d,%d,%d,%.9g\n", name_of(o.attention), o.dp, o.sp, s.step, s.loss);
  }
};

// Trains `o` on in-process ranks.
run_result train_in_process(const run_options& o, const std::vector<std::uint8_t>& text, const program_options& p,
                            std::FILE* log) {
  run_result result;
  seqpar::run_in_process(o.dp * o.sp, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
    tiny_lm::train(world, o, text, [&](const step_record& s) {
      if (world.rank() == 0) result.record(o, s, p.quiet, log);
    });
  });
  print_memory(o, result.last);
  return result;
}

// The largest relative difference between two runs' losses, step by step.
double max_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    worst = std::max(worst, std::fabs(a[i] - b[i]) / std::fabs(b[i]));
  return worst;
}

// The largest difference between two gradients, relative to the largest element of the second.
double gradient_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || b.empty()) return INFINITY;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff = std::max(diff, double(std::fabs(a[i] - b[i]))), scale = std::max(scale, double(std::fabs(b[i])));
  return diff / scale;
}

// The parity line of one run against the one-rank run; true when within tolerance.
bool report_parity(const run_options& o, const run_result& run, const run_result& one, double tolerance,
                   const char* how) {
  const double diff = max_relative_difference(run.losses, one.losses);
  const double first = run.losses.empty() ? INFINITY : std::fabs(run.losses[0] - one.losses[0]) / one.losses[0];
  const double gradient = gradient_difference(run.first_gradient, one.first_gradient);
  // The first step's gradient is the same sum in another order: it must agree to float rounding.
  const bool ok = run.losses.size() == one.losses.size() && diff <= tolerance && gradient <= 1e-5;
  std::printf("parity  %-7s dp=%d sp=%d%s vs one rank over %zu steps: max relative loss difference %.3e; first step: "
              "loss %.3e, gradient %.3e (of its largest element)  %s\n",
              name_of(o.attention), o.dp, o.sp, how, run.losses.size(), diff, first, gradient, ok ? "ok" : "FAILED");
  return ok;
}

int parity(program_options& p, const std::vector<std::uint8_t>& text, std::FILE* log) {
  run_options one = p.run;
  one.dp = one.sp = 1;
  const auto reference = train_in_process(one, text, p, log);
  int failures = 0;
  for (std::size_t at = 0; at < p.parity.size();) {
    const auto end = std::min(p.parity.find(',', at), p.parity.size());
    const std::string mesh = p.parity.substr(at, end - at);
    at = end + 1;
    run_options o = p.run;
    if (std::sscanf(mesh.c_str(), "%dx%d", &o.dp, &o.sp) != 2) usage(("--parity: expected DPxSP, got " + mesh).c_str());
    failures += !report_parity(o, train_in_process(o, text, p, log), reference, p.tolerance, "");
  }
  return failures == 0 ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  auto p = parse(argc, argv);
  try {
    const auto text = tiny_lm::read_corpus(p.text);
    std::FILE* log = p.log.empty() ? nullptr : std::fopen(p.log.c_str(), "a");
    if (!p.mpi) {
      std::printf("text: %zu bytes from %s, unigram entropy %.4f nats per byte\n", text.size(), p.text.c_str(),
                  tiny_lm::unigram_entropy(text));
      const int rc = p.parity.empty() ? (train_in_process(p.run, text, p, log), 0) : parity(p, text, log);
      if (log) std::fclose(log);
      return rc;
    }
#if SEQPAR_HAS_MPI
    MPI_Init(&argc, &argv);
    int rc = 0;
    {
      seqpar::mpi_communicator world(MPI_COMM_WORLD);
      const bool first = world.rank() == 0;
      run_options& o = p.run;
      if (o.dp == 1 && o.sp == 1) o.sp = world.size();  // otherwise the mesh checks dp * sp
      if (first)
        std::printf("text: %zu bytes, unigram entropy %.4f nats per byte; %d MPI processes\n", text.size(),
                    tiny_lm::unigram_entropy(text), world.size());
      run_result run;
      tiny_lm::train(world, o, text, [&](const step_record& s) {
        if (first) run.record(o, s, p.quiet, log);
      });
      if (first) {
        print_memory(o, run.last);
        if (!p.parity.empty()) {
          // The one-rank run of the same model, in this process, as the reference.
          run_options one = o;
          one.dp = one.sp = 1;
          program_options quiet = p;
          quiet.quiet = true;
          rc = report_parity(o, run, train_in_process(one, text, quiet, nullptr), p.tolerance, " (MPI)") ? 0 : 1;
        }
      }
    }
    MPI_Finalize();
    if (log) std::fclose(log);
    return rc;
#else
    usage("--mpi: this build has no MPI");
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_tiny_lm: %s\n", e.what());
    return 1;
  }
}
