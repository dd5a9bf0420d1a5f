// Classification metrics for NAME-eval and the per-epoch evaluation: a
// confusion matrix (rows are true classes, columns predictions, as in
// sklearn), accuracy overall and per class, top-k accuracy, per-class
// precision, recall and F1 with macro and weighted averages (sklearn's
// classification_report), the loss of the YAML's criterion over a whole data
// set, and numbers printed in their shortest round-trip form.
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

// sklearn's precision_recall_fscore_support for one class with
// zero_division=0: precision tp / (tp + fp), recall tp / (tp + fn), F1 their
// harmonic mean, each 0 where its denominator is; support tp + fn.
ClassScore conf_class_score(const Confusion *c, int cls) {
  int64_t tp = c->m[cls * c->k + cls], predicted = 0, actual = 0;
  for (int j = 0; j < c->k; j++) {
    predicted += c->m[j * c->k + cls];
    actual += c->m[cls * c->k + j];
  }
  ClassScore s = {0, 0, 0, actual};
  s.precision = predicted ? (double)tp / predicted : 0.0;
  s.recall = actual ? (double)tp / actual : 0.0;
  s.f1 = s.precision + s.recall > 0 ? 2 * s.precision * s.recall / (s.precision + s.recall) : 0.0;
  return s;
}

// The macro average is the plain mean over every class of the model (as
// classification_report with labels=range(k)); the weighted one weights each
// class by its support.
void conf_averages(const Confusion *c, ClassScore *macro, ClassScore *weighted) {
  *macro = *weighted = (ClassScore){0, 0, 0, 0};
  for (int i = 0; i < c->k; i++) {
    ClassScore s = conf_class_score(c, i);
    macro->precision += s.precision / c->k;
    macro->recall += s.recall / c->k;
    macro->f1 += s.f1 / c->k;
    weighted->precision += s.precision * s.support;
    weighted->recall += s.recall * s.support;
    weighted->f1 += s.f1 * s.support;
    weighted->support += s.support;
  }
  macro->support = weighted->support;
  if (weighted->support) {
    weighted->precision /= weighted->support;
    weighted->recall /= weighted->support;
    weighted->f1 /= weighted->support;
  }
}

void conf_binary(const Confusion *c, double *precision, double *recall, double *f1) {
  ClassScore s = conf_class_score(c, 1);
  *precision = s.precision, *recall = s.recall, *f1 = s.f1;
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

// sklearn's classification_report layout, with four digits.
void conf_print_report(FILE *f, const Confusion *c, const char *const *names) {
  int width = (int)strlen("weighted avg");
  for (int i = 0; i < c->k; i++)
    if ((int)strlen(names[i]) > width)
      width = (int)strlen(names[i]);
  fprintf(f, "%*s %9s %9s %9s %9s\n\n", width, "", "precision", "recall", "f1-score", "support");
  for (int i = 0; i < c->k; i++) {
    ClassScore s = conf_class_score(c, i);
    fprintf(f, "%*s %9.4f %9.4f %9.4f %9lld\n", width, names[i], s.precision, s.recall, s.f1,
            (long long)s.support);
  }
  ClassScore macro, weighted;
  conf_averages(c, &macro, &weighted);
  fprintf(f, "\n%*s %9s %9s %9.4f %9lld\n", width, "accuracy", "", "", conf_accuracy(c),
          (long long)c->total);
  fprintf(f, "%*s %9.4f %9.4f %9.4f %9lld\n", width, "macro avg", macro.precision, macro.recall,
          macro.f1, (long long)macro.support);
  fprintf(f, "%*s %9.4f %9.4f %9.4f %9lld\n", width, "weighted avg", weighted.precision,
          weighted.recall, weighted.f1, (long long)weighted.support);
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

// The shortest %.Ng (N from 1 to 17) that reads back as exactly v, so 0.57
// prints as 0.57 and not 0.56999999999999995; 17 digits always suffice.
const char *xc_shortest(double v, char buf[32]) {
  for (int digits = 1; digits <= 17; digits++) {
    snprintf(buf, 32, "%.*g", digits, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  return buf;
}

// Doubles in JSON: the shortest text that reads back exactly; NaN and the
// infinities are not JSON, so they are null.
void xc_json_number(FILE *f, double v) {
  char buf[32];
  if (!isfinite(v))
    fputs("null", f);
  else
    fputs(xc_shortest(v, buf), f);
}

static void json_key_number(FILE *f, const char *key, double v) {
  fprintf(f, ", \"%s\": ", key);
  xc_json_number(f, v);
}

static void json_score(FILE *f, const ClassScore *s) {
  fputs("{\"precision\": ", f);
  xc_json_number(f, s->precision);
  json_key_number(f, "recall", s->recall);
  json_key_number(f, "f1-score", s->f1);
  fprintf(f, ", \"support\": %lld}", (long long)s->support);
}

void eval_print_json(FILE *f, const EvalResult *r, const char *const *names, bool binary,
                     double threshold) {
  const Confusion *c = &r->conf;
  fputs("{\"accuracy\": ", f);
  xc_json_number(f, conf_accuracy(c));
  fprintf(f, ", \"samples\": %lld", (long long)c->total);
  json_key_number(f, "loss", r->loss);
  if (r->top_k) {
    fprintf(f, ", \"top_k\": %d", r->top_k);
    json_key_number(f, "top_k_accuracy", r->top_k_accuracy);
  }
  if (binary) {
    double p, rc, f1;
    conf_binary(c, &p, &rc, &f1);
    json_key_number(f, "precision", p);
    json_key_number(f, "recall", rc);
    json_key_number(f, "f1", f1);
    json_key_number(f, "threshold", threshold);
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
    xc_json_number(f, conf_class_accuracy(c, i));
  }
  // classification_report(..., output_dict=True), key for key.
  fputs("}, \"classification_report\": {", f);
  for (int i = 0; i < c->k; i++) {
    ClassScore s = conf_class_score(c, i);
    json_string(f, names[i]);
    fputs(": ", f);
    json_score(f, &s);
    fputs(", ", f);
  }
  ClassScore macro, weighted;
  conf_averages(c, &macro, &weighted);
  fputs("\"accuracy\": ", f);
  xc_json_number(f, conf_accuracy(c));
  fputs(", \"macro avg\": ", f);
  json_score(f, &macro);
  fputs(", \"weighted avg\": ", f);
  json_score(f, &weighted);
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

// The label is among the k largest logits when fewer than k classes rank
// before it: those with a larger logit, and on a tie those of a smaller
// index (so k = 1 agrees with xc_argmax, and ties never count twice).
bool xc_in_top_k(const float *logits, int n, int label, int k) {
  int before = 0;
  for (int i = 0; i < n; i++)
    before += logits[i] > logits[label] || (logits[i] == logits[label] && i < label);
  return before < k;
}

void xc_softmax(const float *logits, int n, double *out) {
  double mx = logits[xc_argmax(logits, n)], sum = 0;
  for (int i = 0; i < n; i++)
    sum += out[i] = exp((double)logits[i] - mx);
  for (int i = 0; i < n; i++)
    out[i] /= sum;
}

double xc_sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

//
// The loss of a whole data set
//

// log(1 + exp(x)) without overflow.
static double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

// One sample's terms, in double. Cross-entropy (PyTorch 1.13's
// cross_entropy with weight w and label smoothing e over K classes, mean
// reduction): (1 - e) * sum_i w[y_i] (-log p_i[y_i]) / sum_i w[y_i]
//   + e / K * sum_i sum_c w[c] (-log p_i[c]) / (sum_i w[y_i], or N without w).
// BCEWithLogitsLoss(pos_weight p): mean of p y softplus(-z) + (1 - y) softplus(z).
void loss_add(const XcModel *m, LossSum *s, const float *logits, int label) {
  if (m->loss_kind == XC_LOSS_BCE_WITH_LOGITS) {
    double z = logits[0], y = label;
    s->nll += m->pos_weight * y * softplus(-z) + (1 - y) * softplus(z);
    s->weight += 1;
    s->samples++;
    return;
  }
  if (m->loss_kind != XC_LOSS_CROSS_ENTROPY)
    return;
  int k = m->outputs;
  double mx = logits[xc_argmax(logits, k)], sum = 0;
  for (int c = 0; c < k; c++)
    sum += exp((double)logits[c] - mx);
  double lse = mx + log(sum), smooth = 0;
  for (int c = 0; c < k; c++)
    smooth += (m->class_weights ? m->class_weights[c] : 1.0) * (lse - logits[c]);
  double w = m->class_weights ? m->class_weights[label] : 1.0;
  s->nll += w * (lse - logits[label]);
  s->smooth += smooth;
  s->weight += w;
  s->samples++;
}

double loss_value(const XcModel *m, const LossSum *s, const float *params) {
  if (m->loss_kind == XC_LOSS_NONE || !s->samples)
    return NAN;
  double v = s->nll / s->weight;
  if (m->loss_kind == XC_LOSS_CROSS_ENTROPY && m->label_smoothing > 0) {
    double e = m->label_smoothing;
    double smooth = s->smooth / (m->class_weights ? s->weight : (double)s->samples);
    v = (1 - e) * v + e / m->outputs * smooth;
  }
  for (int i = 0; i < m->nl2; i++) {
    const XcTensorInfo *t = &m->params[m->l2[i].param];
    double sq = 0;
    for (int64_t j = 0; j < xc_numel(t); j++)
      sq += (double)params[t->offset + j] * params[t->offset + j];
    v += m->l2[i].weight * sqrt(sq);
  }
  return v;
}
