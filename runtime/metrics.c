// Classification metrics for NAME-eval and the per-epoch evaluation: a
// confusion matrix (rows are true classes, columns predictions, as in
// sklearn), accuracy overall and per class, and for binary models precision,
// recall and F1 of the positive class (class 1), printed as a table with
// class names or as JSON.
#include "rt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void conf_init(Confusion *c, int k) {
  c->k = k;
  c->m = xc_calloc((size_t)k * k, sizeof(int64_t));
  c->total = 0;
}

void conf_add(Confusion *c, int truth, int pred) {
  c->m[truth * c->k + pred]++;
  c->total++;
}

void conf_free(Confusion *c) { free(c->m); }

double conf_accuracy(const Confusion *c) {
  int64_t right = 0;
  for (int i = 0; i < c->k; i++)
    right += c->m[i * c->k + i];
  return c->total ? (double)right / c->total : 0.0;
}

double conf_class_accuracy(const Confusion *c, int cls) {
  int64_t row = 0;
  for (int j = 0; j < c->k; j++)
    row += c->m[cls * c->k + j];
  return row ? (double)c->m[cls * c->k + cls] / row : NAN;
}

void conf_binary(const Confusion *c, double *precision, double *recall, double *f1) {
  int64_t tp = c->m[3], fp = c->m[1], fn = c->m[2];
  *precision = tp + fp ? (double)tp / (tp + fp) : 0.0;
  *recall = tp + fn ? (double)tp / (tp + fn) : 0.0;
  *f1 = *precision + *recall > 0 ? 2 * *precision * *recall / (*precision + *recall) : 0.0;
}

void conf_print(FILE *f, const Confusion *c, const char *const *names) {
  int width = 5;
  for (int i = 0; i < c->k; i++) {
    int n = (int)strlen(names[i]);
    if (n > width)
      width = n;
  }
  int64_t most = 0;
  for (int i = 0; i < c->k * c->k; i++)
    if (c->m[i] > most)
      most = c->m[i];
  int cell = snprintf(NULL, 0, "%lld", (long long)most);
  for (int i = 0; i < c->k; i++) {
    int n = (int)strlen(names[i]);
    if (n > cell)
      cell = n;
  }
  fprintf(f, "confusion matrix (rows: true class, columns: predicted):\n%*s", width, "");
  for (int j = 0; j < c->k; j++)
    fprintf(f, " %*s", cell, names[j]);
  fputc('\n', f);
  for (int i = 0; i < c->k; i++) {
    fprintf(f, "%*s", width, names[i]);
    for (int j = 0; j < c->k; j++)
      fprintf(f, " %*lld", cell, (long long)c->m[i * c->k + j]);
    fputc('\n', f);
  }
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = *s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

// Doubles in JSON: enough digits to read back exactly; NaN is not JSON.
static void json_number(FILE *f, double v) {
  if (isnan(v))
    fputs("null", f);
  else
    fprintf(f, "%.17g", v);
}

void conf_print_json(FILE *f, const Confusion *c, const char *const *names, bool binary,
                     double threshold) {
  fputs("{\"accuracy\": ", f);
  json_number(f, conf_accuracy(c));
  fprintf(f, ", \"samples\": %lld", (long long)c->total);
  if (binary) {
    double p, r, f1;
    conf_binary(c, &p, &r, &f1);
    fputs(", \"precision\": ", f);
    json_number(f, p);
    fputs(", \"recall\": ", f);
    json_number(f, r);
    fputs(", \"f1\": ", f);
    json_number(f, f1);
    fputs(", \"threshold\": ", f);
    json_number(f, threshold);
  }
  fputs(", \"classes\": [", f);
  for (int i = 0; i < c->k; i++) {
    if (i)
      fputs(", ", f);
    json_string(f, names[i]);
  }
  fputs("], \"per_class_accuracy\": {", f);
  for (int i = 0; i < c->k; i++) {
    if (i)
      fputs(", ", f);
    json_string(f, names[i]);
    fputs(": ", f);
    json_number(f, conf_class_accuracy(c, i));
  }
  fputs("}, \"confusion_matrix\": [", f);
  for (int i = 0; i < c->k; i++) {
    fputs(i ? ", [" : "[", f);
    for (int j = 0; j < c->k; j++)
      fprintf(f, "%s%lld", j ? ", " : "", (long long)c->m[i * c->k + j]);
    fputc(']', f);
  }
  fputs("]}\n", f);
}

int xc_argmax(const float *v, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (v[i] > v[best])
      best = i;
  return best;
}

void xc_softmax(const float *logits, int n, double *out) {
  double mx = logits[xc_argmax(logits, n)], sum = 0;
  for (int i = 0; i < n; i++)
    sum += out[i] = exp((double)logits[i] - mx);
  for (int i = 0; i < n; i++)
    out[i] /= sum;
}

double xc_sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
