// Default initialisation, as PyTorch 1.13 does it for each layer:
// conv/linear weights kaiming_uniform_(a=sqrt(5)), which is U(-b, b) with
// b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), so
// b = 1/sqrt(fan_in); biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch-norm
// weight ones, biases, running means and optimizer state zeros. The random
// numbers come from our own seeded PRNG, not PyTorch's (parity tests use
// --init with weights PyTorch wrote).
#include "rt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t xc_numel(const XcTensorInfo *t) {
  int64_t n = 1;
  for (int i = 0; i < t->rank; i++)
    n *= t->dim[i];
  return n;
}

char *xc_shape_str(int rank, const int64_t *dim) {
  char buf[256];
  int len = snprintf(buf, sizeof buf, "[");
  for (int i = 0; i < rank && len < (int)sizeof buf - 24; i++)
    len += snprintf(buf + len, sizeof buf - len, "%s%lld", i ? "," : "", (long long)dim[i]);
  snprintf(buf + len, sizeof buf - len, "]");
  return xc_strdup(buf);
}

void xc_init_tensors(float *block, const XcTensorInfo *t, int n, uint64_t seed, uint64_t stream) {
  XcRng rng;
  xc_rng_seed(&rng, seed, stream);
  for (int i = 0; i < n; i++) {
    float *p = block + t[i].offset;
    int64_t len = xc_numel(&t[i]);
    switch (t[i].init) {
    case XC_INIT_ZEROS:
      memset(p, 0, len * sizeof(float));
      break;
    case XC_INIT_ONES:
      for (int64_t j = 0; j < len; j++)
        p[j] = 1.0f;
      break;
    case XC_INIT_KAIMING_UNIFORM:
    case XC_INIT_BIAS_UNIFORM: {
      double bound = t[i].fan_in > 0 ? 1.0 / sqrt((double)t[i].fan_in) : 0.0;
      for (int64_t j = 0; j < len; j++)
        p[j] = (float)((2.0 * xc_rng_float(&rng) - 1.0) * bound);
      break;
    }
    default:
      xc_die("the executable and its runtime disagree; recompile the model",
             "tensor '%s' has an unknown initialiser %d", t[i].name, (int)t[i].init);
    }
  }
}

bool xc_is_optimizer_state(const XcModel *m, const XcTensorInfo *t) {
  for (int i = 0; i < m->nparams; i++) {
    size_t n = strlen(m->params[i].name);
    if (!strncmp(t->name, m->params[i].name, n) && t->name[n] == '.')
      return true;
  }
  return false;
}
