// yolov3-416, dense and filter-compacted, as oneDNN primitives called directly: a runtime with no
// cost of its own (no TorchScript, no oneDNN Graph partitions, no allocation in the pass), to
// measure how much of the 0.9 bar of `bench_compact_latency.py` the runtime around oneDNN's
// kernels costs. Built and run by `onednn_direct.sh`; the weights are random (timing only).
//
// Every convolution is one primitive (nhwc, float32, bias, LeakyReLU 0.1 and the residual
// addition as post-ops, the residual added in place, as prunekit's oneDNN Graph form fuses
// them); the two upsample-and-concatenate steps are a loop. Widths are the dense model's times
// `keep` (rounded; 0.25 gives the 75 % compacted model's widths: 2.144 G MACs against 32.93 G).
// Split modes: `library` runs each primitive on two OpenMP threads, oneDNN's own split of the
// work; `rows` gives each of the two threads half of the output rows of every layer at least
// `min_rows` tall, as its own one-thread primitive (only the halo rows cross between the cores).
//
// Usage: onednn_direct ROUNDS KEEP MODE MIN_ROWS [KEEP MODE MIN_ROWS ...]  (MODE 0 library, 1 rows)
// The models are built once and timed in turn, ROUNDS rounds of 1 s each; each model's latency is
// the median of its rounds' medians; the ratio is the first model's latency over each other's,
// divided by its MACs reduction. PROFILE=1 prints instead the per-layer times of the first two;
// PROFILE=warm times each convolution right after running it once more (its inputs, weights and
// output where its own last run left them, in the cores' caches: what the handoff between layers
// costs). THREADS=1 runs the library mode's primitives on one thread (default 2).
#include <dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
using clock_type = std::chrono::steady_clock;

static engine eng(engine::kind::cpu, 0);

static int threads() {
  const char* value = getenv("THREADS");
  return value && atoi(value) == 1 ? 1 : 2;
}

static double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct Map {  // an nhwc activation of batch 1
  int c, h, w;
  std::vector<float> data;
  float* row(int r) { return data.data() + (size_t)r * w * c; }
};

struct Part {  // one primitive computing output rows [a, b)
  convolution_forward prim;
  memory::desc src, dst, scratch;
  memory weights, bias;
  int a, b, first_input_row;
};

struct Conv {
  int ic, oc, k, stride;
  bool leaky, residual;
  Map* in;
  Map* out;
  std::vector<float> weights, bias;
  std::vector<Part> parts;  // one (library) or two (rows)
  double ms = 0;
  long macs() const { return (long)out->h * out->w * oc * ic * k * k; }
};

struct UpCat {  // out = concat(nearest 2x upsample of small, route) along channels
  Map* small;
  Map* route;
  Map* out;
  void rows(int a, int b) {
    int c1 = small->c, c2 = route->c;
    for (int y = a; y < b; ++y)
      for (int x = 0; x < out->w; ++x) {
        float* o = out->row(y) + (size_t)x * out->c;
        memcpy(o, small->row(y / 2) + (size_t)(x / 2) * c1, c1 * sizeof(float));
        memcpy(o + c1, route->row(y) + (size_t)x * c2, c2 * sizeof(float));
      }
  }
};

static Part make_part(const Conv& c, int a, int b) {
  int pad = c.k / 2;
  int r0 = std::max(0, a * c.stride - pad), r1 = std::min(c.in->h, (b - 1) * c.stride - pad + c.k);
  int top = std::max(0, pad - a * c.stride), bottom = (b - a - 1) * c.stride + c.k - top - (r1 - r0);
  int right = (c.out->w - 1) * c.stride + c.k - pad - c.in->w;
  memory::desc src({1, c.ic, r1 - r0, c.in->w}, dt::f32, tag::nhwc);
  memory::desc dst({1, c.oc, b - a, c.out->w}, dt::f32, tag::nhwc);
  memory::desc bias({c.oc}, dt::f32, tag::x);
  post_ops ops;
  if (c.leaky) ops.append_eltwise(algorithm::eltwise_relu, 0.1f, 0.f);
  if (c.residual) ops.append_sum(1.f);
  primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(scratchpad_mode::user);  // two threads may run one cached primitive
  auto pd = convolution_forward::primitive_desc(
      eng, prop_kind::forward_inference, algorithm::convolution_direct, src,
      memory::desc({c.oc, c.ic, c.k, c.k}, dt::f32, tag::any), bias, dst, {c.stride, c.stride},
      {top, pad}, {bottom, right}, attr);
  Part p{convolution_forward(pd), src, dst, pd.scratchpad_desc(), memory(pd.weights_desc(), eng),
         memory(bias, eng), a, b, r0};
  memory plain({{c.oc, c.ic, c.k, c.k}, dt::f32, tag::oihw}, eng, (void*)c.weights.data());
  stream s(eng);
  reorder(plain, p.weights).execute(s, plain, p.weights);
  s.wait();
  memcpy(p.bias.get_data_handle(), c.bias.data(), c.oc * sizeof(float));
  return p;
}

struct Model {
  std::vector<std::unique_ptr<Map>> maps;
  std::vector<Conv> convs;
  std::vector<UpCat> upcats;
  std::vector<std::pair<bool, int>> steps;  // (is a conv, index)
  std::vector<std::vector<char>> scratch;
  std::vector<stream> streams;
  long macs = 0;
  std::string name;
  bool profile = false, warm = false;

  Map* map(int c, int h) {
    maps.emplace_back(new Map{c, h, h, std::vector<float>((size_t)c * h * h)});
    return maps.back().get();
  }
  void conv(Map* in, Map* out, int k, int stride, bool leaky = true, bool residual = false) {
    Conv c{in->c, out->c, k, stride, leaky, residual, in, out};
    c.weights.resize((size_t)c.oc * c.ic * k * k);
    for (auto& v : c.weights) v = (rand() / (float)RAND_MAX - 0.5f) * 0.1f;
    c.bias.assign(c.oc, 0.01f);
    convs.push_back(std::move(c));
    steps.push_back({true, (int)convs.size() - 1});
  }

  Model(double keep, int mode, int min_rows) {
    srand(1);
    auto width = [&](int c) { return std::max(1, (int)(c * keep + 0.5)); };
    Map* image = map(3, 416);
    Map* x = map(width(32), 416);
    conv(image, x, 3, 1);
    Map* routes[2] = {nullptr, nullptr};
    const int blocks[5] = {1, 2, 8, 8, 4};
    for (int stage = 0, ch = 64, hw = 208; stage < 5; ++stage, ch *= 2, hw /= 2) {
      Map* down = map(width(ch), hw);
      conv(x, down, 3, 2);
      x = down;
      for (int b = 0; b < blocks[stage]; ++b) {
        Map* mid = map(width(ch / 2), hw);
        conv(x, mid, 1, 1);
        conv(mid, x, 3, 1, true, true);
      }
      if (stage == 2 || stage == 3) routes[3 - stage] = x;  // 52² for the last head, 26² the middle
    }
    for (int head = 0, c = 512, hw = 13; head < 3; ++head, c /= 2, hw *= 2) {
      Map* in = x;
      for (int i = 0; i < 2; ++i) {
        Map* narrow = map(width(c), hw);
        Map* wide = map(width(2 * c), hw);
        conv(in, narrow, 1, 1);
        conv(narrow, wide, 3, 1);
        in = wide;
      }
      Map* branch = map(width(c), hw);
      conv(in, branch, 1, 1);
      Map* wide = map(width(2 * c), hw);
      conv(branch, wide, 3, 1);
      conv(wide, map(255, hw), 1, 1, false);
      if (head < 2) {
        Map* small = map(width(c / 2), hw);
        conv(branch, small, 1, 1);
        Map* cat = map(small->c + routes[head]->c, 2 * hw);
        upcats.push_back({small, routes[head], cat});
        steps.push_back({false, (int)upcats.size() - 1});
        x = cat;
      }
    }
    for (auto& v : image->data) v = rand() / (float)RAND_MAX;
    for (auto& c : convs) {
      macs += c.macs();
      bool split = mode == 1 && c.out->h >= min_rows;
      omp_set_num_threads(split ? 1 : threads());  // each half is planned for its one thread
      int h = c.out->h;
      if (split) {
        c.parts.push_back(make_part(c, 0, h / 2));
        c.parts.push_back(make_part(c, h / 2, h));
      } else {
        c.parts.push_back(make_part(c, 0, h));
      }
    }
    omp_set_num_threads(threads());
    size_t size = 0;
    for (auto& c : convs)
      for (auto& p : c.parts) size = std::max(size, p.scratch.get_size());
    scratch.assign(2, std::vector<char>(size + 64));
    streams.emplace_back(eng);
    streams.emplace_back(eng);
    char text[64];
    snprintf(text, sizeof text, "keep %.2f %s %d", keep, mode ? "rows" : "library", min_rows);
    name = text;
  }

  void run(Conv& c, int part, int thread) {
    Part& p = c.parts[part];
    memory src(p.src, eng, c.in->row(p.first_input_row));
    memory dst(p.dst, eng, c.out->row(p.a));
    memory scratchpad(p.scratch, eng, scratch[thread].data());
    p.prim.execute(streams[thread], {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.weights},
                                     {DNNL_ARG_BIAS, p.bias}, {DNNL_ARG_DST, dst},
                                     {DNNL_ARG_SCRATCHPAD, scratchpad}});
  }

  void pass() {
    for (size_t i = 0; i < steps.size();) {
      auto [is_conv, j] = steps[i];
      if (is_conv && convs[j].parts.size() == 1) {
        if (warm) run(convs[j], 0, 0);  // a residual layer adds twice: timing only
        auto t0 = clock_type::now();
        run(convs[j], 0, 0);
        if (profile) convs[j].ms += ms_since(t0);
        ++i;
        continue;
      }
      // a stretch of row-split steps: one parallel region, a barrier between steps
      size_t end = i;
      while (end < steps.size() && (!steps[end].first || convs[steps[end].second].parts.size() == 2))
        ++end;
#pragma omp parallel num_threads(2)
      {
        int t = omp_get_thread_num();
        for (size_t q = i; q < end; ++q) {
          auto [conv_step, k] = steps[q];
          if (conv_step) {
            run(convs[k], t, t);
          } else {
            int h = upcats[k].out->h;
            upcats[k].rows(h * t / 2, h * (t + 1) / 2);
          }
#pragma omp barrier
        }
      }
      i = end;
    }
  }
};

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 5 || (argc - 2) % 3) {
    fprintf(stderr, "usage: %s ROUNDS KEEP MODE MIN_ROWS [KEEP MODE MIN_ROWS ...]\n", argv[0]);
    return 2;
  }
  int rounds = atoi(argv[1]);
  std::vector<std::unique_ptr<Model>> models;
  for (int i = 2; i + 2 < argc; i += 3)
    models.emplace_back(new Model(atof(argv[i]), atoi(argv[i + 1]), atoi(argv[i + 2])));
  for (auto& m : models) m->pass();
  if (getenv("PROFILE") && models.size() >= 2) {
    Model& a = *models[0];
    Model& b = *models[1];
    int na = a.macs > 1e10 ? 20 : 200, nb = b.macs > 1e10 ? 20 : 200;
    a.profile = b.profile = true;
    a.warm = b.warm = std::string(getenv("PROFILE")) == "warm";
    for (int i = 0; i < na; ++i) a.pass();
    for (int i = 0; i < nb; ++i) b.pass();
    double excess = 0;
    printf("layer  in->out k s  rows   first ms  G MACs/s  second ms  G MACs/s  beyond its MACs\n");
    for (size_t j = 0; j < a.convs.size() && j < b.convs.size(); ++j) {
      Conv& ca = a.convs[j];
      Conv& cb = b.convs[j];
      double ta = ca.ms / na, tb = cb.ms / nb, beyond = tb - ta * cb.macs() / ca.macs();
      excess += beyond;
      printf("%5zu %4d->%4d %d %d %4d %10.3f %9.1f %10.3f %9.1f %10.3f\n", j, cb.ic, cb.oc, cb.k,
             cb.stride, cb.out->h, ta, ca.macs() / ta / 1e6, tb, cb.macs() / tb / 1e6, beyond);
    }
    double sum_a = 0, sum_b = 0;
    for (Conv& c : a.convs) sum_a += c.ms / na;
    for (Conv& c : b.convs) sum_b += c.ms / nb;
    printf("all layers beyond their MACs: %.3f ms; the layers' times %.3f and %.3f ms: "
           "speed-up / MACs reduction = %.3f\n",
           excess, sum_a, sum_b, sum_a / sum_b / ((double)a.macs / b.macs));
    return 0;
  }
  std::vector<std::vector<double>> per_round(models.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t m = 0; m < models.size(); ++m) {
      std::vector<double> times;
      auto start = clock_type::now();
      while (ms_since(start) < 1000.0) {
        auto t0 = clock_type::now();
        models[m]->pass();
        times.push_back(ms_since(t0));
      }
      per_round[m].push_back(median(times));
    }
  std::vector<double> latency;
  for (size_t m = 0; m < models.size(); ++m) {
    latency.push_back(median(per_round[m]));
    printf("%-22s %7.3f G MACs %9.3f ms (rounds:", models[m]->name.c_str(), models[m]->macs / 1e9,
           latency[m]);
    for (double t : per_round[m]) printf(" %.2f", t);
    printf(")\n");
  }
  for (size_t m = 1; m < models.size(); ++m)
    printf("%s: speed-up / MACs reduction = %.3f\n", models[m]->name.c_str(),
           latency[0] / latency[m] / ((double)models[0]->macs / models[m]->macs));
  return 0;
}
