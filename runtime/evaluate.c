// Evaluation over a whole data set with the generated forward function:
// batches of the compiled size, the last one padded with zeros and the
// padding ignored, predictions into a confusion matrix, the loss and the
// top-k accuracy from the same logits (with data.test_augment, the average
// over each image and its mirror). Shared by NAME-eval and the
// per-epoch evaluation of NAME-train; the forward function comes in as a
// pointer because the training executable may not define one.
#include "rt.h"

#include <stdlib.h>
#include <string.h>

#pragma weak xc_forward
#pragma weak xc_prepare_forward

// Binary models (one logit) predict class 1 when sigmoid(logit) > threshold,
// as `torch.sigmoid(out) > 0.5` does.
int xc_predict(const XcModel *m, const float *logits, double threshold) {
  if (m->outputs == 1)
    return xc_sigmoid(logits[0]) > threshold ? 1 : 0;
  return xc_argmax(logits, m->outputs);
}

// The logits of a batch for evaluation. With data: {test_augment:
// {horizontal_flip: true}} they are the average of the batch's and of its
// mirror images', as `(net(x) + net(x.flip(3))) / 2`: images are mirrored in
// place, and spare takes the second set of logits (batch_size * outputs).
void xc_forward_eval(const XcModel *m, XcForwardFn forward, const float *params,
                     const float *state, float *images, float *logits, float *spare,
                     void *workspace) {
  forward(params, state, images, logits, workspace);
  if (!m->test_flip)
    return;
  int64_t rows = (int64_t)m->batch_size * m->channels * m->height;
  for (int64_t r = 0; r < rows; r++) {
    float *row = images + r * m->width;
    for (int i = 0, j = m->width - 1; i < j; i++, j--) {
      float x = row[i];
      row[i] = row[j];
      row[j] = x;
    }
  }
  forward(params, state, images, spare, workspace);
  for (int64_t i = 0; i < (int64_t)m->batch_size * m->outputs; i++)
    logits[i] = (logits[i] + spare[i]) / 2;
}

void xc_evaluate(const XcModel *m, XcForwardFn forward, const float *params, const float *state,
                 const Dataset *d, const Transform *t, void *workspace, double threshold,
                 int top_k, EvalResult *r) {
  int b = m->batch_size;
  size_t floats = (size_t)d->c * d->h * d->w;
  float *images = xc_alloc_floats((int64_t)b * floats);
  float *logits = xc_alloc_floats((int64_t)b * m->outputs);
  float *spare = m->test_flip ? xc_alloc_floats((int64_t)b * m->outputs) : NULL;
  conf_init(&r->conf, m->outputs == 1 ? 2 : m->outputs);
  LossSum loss = {0};
  int64_t top_right = 0;
  // Once per evaluation, not per batch: NAME-train's weights and workspace
  // have changed since the last one.
  if (forward == xc_forward && xc_prepare_forward)
    xc_prepare_forward(params, state, NULL, NULL, workspace);
  for (int64_t start = 0; start < d->n; start += b) {
    int real = d->n - start < b ? (int)(d->n - start) : b;
    for (int i = 0; i < real; i++)
      xc_transform(t, d->pixels + (start + i) * floats, d->c, d->h, d->w, images + i * floats,
                   NULL);
    memset(images + real * floats, 0, (b - real) * floats * sizeof(float));
    xc_forward_eval(m, forward, params, state, images, logits, spare, workspace);
    for (int i = 0; i < real; i++) {
      const float *l = logits + (size_t)i * m->outputs;
      int label = d->labels[start + i];
      conf_add(&r->conf, label, xc_predict(m, l, threshold));
      loss_add(m, &loss, l, label);
      if (top_k)
        top_right += xc_in_top_k(l, m->outputs, label, top_k);
    }
  }
  r->loss = loss_value(m, &loss, params);
  r->top_k = top_k;
  r->top_k_accuracy = d->n ? (double)top_right / d->n : 0.0;
  free(images);
  free(logits);
  free(spare);
}

Transform xc_model_transform(const XcModel *m, bool train) {
  Transform t = {0};
  for (int c = 0; c < 4; c++) {
    t.mean[c] = m->mean[c];
    t.std[c] = m->std[c] != 0 ? m->std[c] : 1.0f;
  }
  if (train) {
    t.crop_padding = m->random_crop_padding;
    t.flip = m->random_flip;
  }
  xc_transform_tables(&t);
  return t;
}
