// models[].optimize: TorchScript's inference passes, and the packed-weight Linear
// (the operator splitlearnd::packed_linear and the graph pass that puts it in).
#include "manager/torchscript/optimize.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/frozen_conv_add_relu_fusion.h>
#include <torch/csrc/jit/passes/frozen_ops_to_mkldnn.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "manager/torchscript/packed_gemm.h"

namespace splitlearnd {
namespace {

// A packed weight is read front to back on every call, and at serving sizes it is
// bigger than L2 (768 x 768: 2.3 MiB); on 4 KiB pages each call also walks hundreds
// of page-table entries, which costs most under a hypervisor. The buffer is therefore
// 2 MiB-aligned and offered to the kernel for transparent huge pages (where THP is
// "madvise" or "always"; elsewhere the advice is ignored and the pages stay small).
at::Tensor AllocatePacked(at::IntArrayRef shape) {
  constexpr size_t kHuge = 2u << 20;
  size_t bytes = sizeof(float);
  for (int64_t d : shape) bytes *= static_cast<size_t>(d);
  if (bytes < kHuge) return at::empty(shape, at::kFloat);
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, rounded);
  TORCH_CHECK(p != nullptr, "packed_linear: cannot allocate ", rounded, " bytes for a packed weight");
#ifdef MADV_HUGEPAGE
  madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return at::from_blob(p, shape, [](void* q) { std::free(q); }, at::TensorOptions().dtype(at::kFloat));
}

// The operator is registered for the whole process, so a TorchScript file could call
// it with arguments the packing pass never makes: it checks them all before the kernel
// reads anything.
void CheckPacked(const at::Tensor& packed, const c10::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(packed_gemm::Supported(), "packed_linear: this CPU has no AVX2/FMA");
  TORCH_CHECK(out_features >= 0, "packed_linear: out_features must not be negative");
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.device().is_cpu() && packed.layout() == at::kStrided &&
                  packed.dim() == 3 && packed.size(2) == packed_gemm::kPanelWidth &&
                  packed.size(0) == (out_features + packed_gemm::kPanelWidth - 1) / packed_gemm::kPanelWidth &&
                  packed.is_contiguous() && reinterpret_cast<uintptr_t>(packed.data_ptr()) % 32 == 0,
              "packed_linear: the packed weight is not one that prepack_linear made for ", out_features,
              " output features");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->device().is_cpu() && bias->layout() == at::kStrided &&
                    bias->dim() == 1 && bias->size(0) == out_features && bias->is_contiguous(),
                "packed_linear: the bias must be a contiguous float32 CPU vector of ", out_features);
  }
}

at::Tensor PackedLinear(const at::Tensor& input, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                        int64_t out_features) {
  CheckPacked(packed, bias, out_features);
  const int64_t k = packed.size(1);
  TORCH_CHECK(input.dim() >= 1, "packed_linear: a 0-dimensional input has no shape to multiply by a ", k, "x",
              out_features, " weight");
  TORCH_CHECK(input.size(-1) == k, "packed_linear: an input of shape ", input.sizes(), " cannot be multiplied by a ",
              k, "x", out_features, " weight (its last dimension must be ", k, ")");
  TORCH_CHECK(input.scalar_type() == at::kFloat, "packed_linear: expected a float32 input, got dtype ",
              input.scalar_type());
  TORCH_CHECK(input.device().is_cpu() && input.layout() == at::kStrided,
              "packed_linear: expected a dense CPU input, got one on ", input.device());
  const at::Tensor x = input.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  at::Tensor y = at::empty(shape, x.options());
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  if (rows > 0 && out_features > 0) {
    packed_gemm::Gemm(x.data_ptr<float>(), rows, k, packed.data_ptr<float>(), out_features,
                      bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), packed_gemm::BestIsa(),
                      // OpenBLAS's count, set per model by the device worker: one setting
                      // for a model's BLAS calls and its packed layers alike.
                      std::max(1, OpenBlasThreads()));
  }
  return y;
}

TORCH_LIBRARY(splitlearnd, m) {
  m.def("packed_linear(Tensor input, Tensor packed, Tensor? bias, int out_features) -> Tensor", &PackedLinear);
}

// A bias the kernel can take: a dense float32 CPU vector of N values.
bool IsFloatCpuVector(const at::Tensor& t, int64_t n) {
  return t.scalar_type() == at::kFloat && t.layout() == at::kStrided && t.dim() == 1 && t.size(0) == n &&
         t.device().is_cpu();
}

bool IsFloatCpuMatrix(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.layout() == at::kStrided && t.dim() == 2 && t.device().is_cpu() &&
         !t.requires_grad();
}

// A model written as add(matmul(x, W), b, 1) (torch's own optimize_for_inference also
// leaves Linear layers in that form). Where the matmul's only use is that add and b is
// a float32 constant of N, the add becomes the kernel's bias: one pass over the output
// and one allocation fewer.
void FoldBiasAdd(torch::jit::Node* packed_node) {
  const auto none = torch::jit::toIValue(packed_node->input(2));
  if (!none || !none->isNone()) return;  // has its bias already
  const int64_t n = torch::jit::toIValue(packed_node->input(3))->toInt();
  const auto& uses = packed_node->output()->uses();
  if (uses.size() != 1 || uses[0].offset != 0) return;
  torch::jit::Node* add = uses[0].user;
  if (add->kind() != c10::Symbol::fromQualString("aten::add") || add->inputs().size() != 3) return;
  const auto b = torch::jit::toIValue(add->input(1));
  const auto alpha = torch::jit::toIValue(add->input(2));
  if (!b || !b->isTensor() || !alpha || !alpha->isInt() || alpha->toInt() != 1) return;
  const at::Tensor t = b->toTensor();
  if (!IsFloatCpuVector(t, n)) return;
  torch::jit::WithInsertPoint guard(packed_node);
  packed_node->replaceInput(2, packed_node->owningGraph()->insertConstant(t.contiguous().clone()));
  add->output()->replaceAllUsesWith(packed_node->output());
  add->destroy();
}

// Replaces one matmul/linear node, or returns false and leaves it.
bool Rewrite(torch::jit::Graph& graph, torch::jit::Node* node) {
  const bool linear = node->kind() == c10::Symbol::fromQualString("aten::linear");
  if (!linear && node->kind() != c10::Symbol::fromQualString("aten::matmul")) return false;
  // Only the functional forms: matmul(x, W) and linear(x, W, b), not the out= overloads.
  if (node->inputs().size() != (linear ? 3u : 2u) || node->outputs().size() != 1) return false;
  const auto weight_value = torch::jit::toIValue(node->input(1));
  if (!weight_value || !weight_value->isTensor()) return false;
  const at::Tensor w = weight_value->toTensor();
  if (!IsFloatCpuMatrix(w)) return false;
  // matmul's weight is K x N; linear's is N x K (read transposed).
  const int64_t k = linear ? w.size(1) : w.size(0);
  const int64_t n = linear ? w.size(0) : w.size(1);
  const int64_t stride_k = linear ? w.stride(1) : w.stride(0);
  const int64_t stride_n = linear ? w.stride(0) : w.stride(1);
  c10::optional<at::Tensor> bias;
  if (linear) {
    const auto b = torch::jit::toIValue(node->input(2));
    if (!b) return false;  // a bias computed at run time
    if (b->isTensor()) {
      const at::Tensor t = b->toTensor();
      if (!IsFloatCpuVector(t, n)) return false;
      bias = t.contiguous().clone();
    } else if (!b->isNone()) {
      return false;
    }
  }
  const int64_t panels = (n + packed_gemm::kPanelWidth - 1) / packed_gemm::kPanelWidth;
  // Shaped (panels, K, 16) for the operator's size checks; the floats inside are in
  // Pack's order (by K slice, then panel).
  at::Tensor packed = AllocatePacked({panels, k, packed_gemm::kPanelWidth});
  packed_gemm::Pack(w.data_ptr<float>(), k, n, stride_k, stride_n, packed.data_ptr<float>());

  torch::jit::WithInsertPoint guard(node);
  torch::jit::Value* packed_v = graph.insertConstant(packed);
  torch::jit::Value* bias_v = bias ? graph.insertConstant(*bias) : graph.insertConstant(c10::IValue());
  torch::jit::Value* n_v = graph.insertConstant(n);
  torch::jit::Node* replacement = graph.create(c10::Symbol::fromQualString("splitlearnd::packed_linear"),
                                               {node->input(0), packed_v, bias_v, n_v}, 1);
  replacement->insertBefore(node);
  replacement->output()->setType(node->output()->type());
  node->output()->replaceAllUsesWith(replacement->output());
  node->destroy();
  return true;
}

void CollectPacked(torch::jit::Block* block, std::vector<torch::jit::Node*>& out) {
  for (torch::jit::Node* node : block->nodes()) {
    for (torch::jit::Block* sub : node->blocks()) CollectPacked(sub, out);
    if (node->kind() == c10::Symbol::fromQualString("splitlearnd::packed_linear")) out.push_back(node);
  }
}

void RewriteBlock(torch::jit::Graph& graph, torch::jit::Block* block, int& rewritten) {
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    torch::jit::Node* node = *it;
    ++it;  // before Rewrite destroys the node
    for (torch::jit::Block* sub : node->blocks()) RewriteBlock(graph, sub, rewritten);
    if (Rewrite(graph, node)) ++rewritten;
  }
}

}  // namespace

int OpenBlasThreads() {
  using Fn = int (*)();
  static const auto get = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get ? get() : 0;
}

bool PrepackLinearSupported() { return packed_gemm::Supported(); }

int PrepackLinearWeights(torch::jit::Module& module) {
  if (!packed_gemm::Supported()) return 0;
  auto method = module.find_method("forward");
  if (!method) return 0;
  std::shared_ptr<torch::jit::Graph> graph = method->graph();
  int rewritten = 0;
  RewriteBlock(*graph, graph->block(), rewritten);
  std::vector<torch::jit::Node*> packed;  // collected first: folding destroys add nodes
  CollectPacked(graph->block(), packed);
  for (torch::jit::Node* node : packed) FoldBiasAdd(node);
  if (rewritten > 0) torch::jit::EliminateDeadCode(graph);  // the unpacked weights
  return rewritten;
}

torch::jit::Module OptimizeForInference(const torch::jit::Module& module, bool prepack_linear) {
  // torch::jit::optimize_for_inference's passes but one: freezing with the numerical
  // folds (conv/linear with batch-norm, add, mul), conv+add+relu fusion and the MKLDNN
  // conversion. Its last pass, FrozenLinearTranspose, is left out: it stores each
  // Linear weight transposed and turns linear(x, W, b) into add(matmul(x, Wt), b),
  // which OpenBLAS's AVX-512 kernels run a third slower than the addmm that linear is
  // (a 4-layer d=768 encoder: 13.0 ms without it, 17.6 ms with it, at 10 rows).
  torch::jit::Module frozen = torch::jit::freeze(module, /*preserved_attrs=*/c10::nullopt, /*optimize_numerics=*/true);
  std::shared_ptr<torch::jit::Graph> graph = frozen.get_method("forward").graph();
  torch::jit::FuseFrozenConvAddRelu(graph);
  torch::jit::ConvertFrozenOpsToMKLDNN(graph);
  if (prepack_linear) PrepackLinearWeights(frozen);
  return frozen;
}

}  // namespace splitlearnd
