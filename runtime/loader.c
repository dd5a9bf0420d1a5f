// The training batch stream: per-epoch seeded shuffles, augmentation,
// ToTensor + Normalize, made on a worker thread one batch ahead of the
// compute (double-buffered), so the training step rarely waits. The stream
// is the same whether or not the worker runs ahead: the order and the
// augmentation draws depend only on the seed and the epoch.
//
// Unless drop_last, an epoch whose size is not a multiple of the batch ends
// with a partial batch, padded to the compiled batch size with zero images
// and rows the losses ignore (XC_PAD_LABEL, XC_PAD_TARGET), so the step
// computes exactly what PyTorch computes on the smaller batch.
#include "rt.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct Loader {
  const Dataset *d;
  Transform t;
  int batch, steps_per_epoch;
  int rank, nranks; // this rank's rows of a global batch of nranks x batch
  bool shuffle, float_labels;
  uint64_t seed;
  int epoch, end_epoch; // producer position
  int iter;
  int32_t *order;
  XcRng aug;

  float *images[2];
  void *labels[2];
  int slot_epoch[2], slot_iter[2], slot_rows[2];
  bool full[2];
  int produce, consume; // next slot for each side
  bool done, stop;      // the producer has made every batch; the consumer quit
  bool threaded;
  double waited; // seconds the consumer spent waiting for a batch
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

// The order of epoch e: dataset order, or a permutation seeded by (seed, e)
// so that --resume at an epoch boundary sees the order a full run sees.
static void start_epoch(Loader *l) {
  for (int64_t i = 0; i < l->d->n; i++)
    l->order[i] = (int32_t)i;
  if (l->shuffle) {
    XcRng r;
    xc_rng_seed(&r, l->seed, 1000 + (uint64_t)l->epoch);
    xc_shuffle(&r, l->order, l->d->n);
  }
  xc_rng_seed(&l->aug, l->seed, 1000000 + (uint64_t)l->epoch);
  l->iter = 0;
}

// Makes the next batch into slot s; false when there is none.
static bool make_next(Loader *l, int s) {
  if (l->iter == l->steps_per_epoch) {
    l->epoch++;
    if (l->epoch >= l->end_epoch)
      return false;
    start_epoch(l);
  }
  bool augment = l->t.crop_padding > 0 || l->t.flip;
  // This rank's rows of the global batch; the augmentation draws of the
  // other ranks' rows are made too (and dropped), so each sample gets the
  // draws it gets in one process.
  int64_t global = (int64_t)l->batch * l->nranks, start = (int64_t)l->iter * global;
  int64_t end = l->d->n - start < global ? l->d->n : start + global;
  int64_t first = start + (int64_t)l->rank * l->batch;
  int rows = (int)(end - first < 0 ? 0 : end - first < l->batch ? end - first : l->batch);
  XcRng *aug = augment ? &l->aug : NULL;
  for (int64_t i = start; aug && i < (rows ? first : end); i++)
    xc_transform(&l->t, NULL, l->d->c, l->d->h, l->d->w, NULL, aug);
  if (rows)
    xc_make_batch(l->d, l->order + first, rows, &l->t, aug, l->images[s], l->labels[s],
                  l->float_labels);
  for (int64_t i = first + rows; aug && rows && i < end; i++)
    xc_transform(&l->t, NULL, l->d->c, l->d->h, l->d->w, NULL, aug);
  size_t sample = (size_t)l->d->c * l->d->h * l->d->w;
  memset(l->images[s] + rows * sample, 0, (l->batch - rows) * sample * sizeof(float));
  for (int i = rows; i < l->batch; i++) {
    if (l->float_labels)
      ((float *)l->labels[s])[i] = XC_PAD_TARGET;
    else
      ((int32_t *)l->labels[s])[i] = XC_PAD_LABEL;
  }
  l->slot_rows[s] = rows;
  l->slot_epoch[s] = l->epoch;
  l->slot_iter[s] = l->iter++;
  return true;
}

static void *producer(void *arg) {
  Loader *l = arg;
  for (;;) {
    pthread_mutex_lock(&l->mu);
    while (l->full[l->produce] && !l->stop)
      pthread_cond_wait(&l->cv, &l->mu);
    bool stop = l->stop;
    pthread_mutex_unlock(&l->mu);
    if (stop)
      return NULL;
    int s = l->produce;
    bool made = make_next(l, s);
    pthread_mutex_lock(&l->mu);
    if (made) {
      l->full[s] = true;
      l->produce ^= 1;
    } else {
      l->done = true;
    }
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (!made)
      return NULL;
  }
}

Loader *loader_start(const Dataset *d, const Transform *t, int batch, bool shuffle, bool drop_last,
                     uint64_t seed, int first_epoch, int end_epoch, bool float_labels,
                     bool threaded) {
  return loader_start_shard(d, t, batch, 0, 1, shuffle, drop_last, seed, first_epoch, end_epoch,
                            float_labels, threaded);
}

Loader *loader_start_shard(const Dataset *d, const Transform *t, int batch, int rank, int nranks,
                           bool shuffle, bool drop_last, uint64_t seed, int first_epoch,
                           int end_epoch, bool float_labels, bool threaded) {
  Loader *l = xc_calloc(1, sizeof *l);
  l->d = d;
  l->t = *t;
  l->batch = batch;
  l->rank = rank;
  l->nranks = nranks;
  int64_t global = (int64_t)batch * nranks;
  l->steps_per_epoch = (int)(drop_last ? d->n / global : (d->n + global - 1) / global);
  l->shuffle = shuffle;
  l->seed = seed;
  l->float_labels = float_labels;
  l->epoch = first_epoch;
  l->end_epoch = end_epoch;
  l->order = xc_malloc(sizeof(int32_t) * (d->n + 1));
  size_t floats = (size_t)batch * d->c * d->h * d->w;
  for (int s = 0; s < 2; s++) {
    l->images[s] = xc_alloc_floats(floats);
    l->labels[s] = xc_alloc_floats(batch);
  }
  if (first_epoch < end_epoch)
    start_epoch(l);
  else
    l->done = true;
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->threaded = threaded && !l->done;
  if (l->threaded && pthread_create(&l->thread, NULL, producer, l) != 0)
    l->threaded = false;
  return l;
}

int loader_steps_per_epoch(const Loader *l) { return l->steps_per_epoch; }

double loader_wait_seconds(const Loader *l) { return l->waited; }

bool loader_next(Loader *l, Batch *b) {
  int s = l->consume;
  if (!l->threaded) {
    if (l->done || !make_next(l, s)) {
      l->done = true;
      return false;
    }
  } else {
    pthread_mutex_lock(&l->mu);
    if (!l->full[s] && !l->done) {
      double t = xc_now();
      while (!l->full[s] && !l->done)
        pthread_cond_wait(&l->cv, &l->mu);
      l->waited += xc_now() - t;
    }
    bool have = l->full[s];
    pthread_mutex_unlock(&l->mu);
    if (!have)
      return false;
  }
  *b = (Batch){l->images[s], l->labels[s], l->slot_epoch[s], l->slot_iter[s], l->slot_rows[s]};
  return true;
}

void loader_release(Loader *l) {
  int s = l->consume;
  l->consume ^= 1;
  if (!l->threaded)
    return;
  pthread_mutex_lock(&l->mu);
  l->full[s] = false;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

void loader_free(Loader *l) {
  if (l->threaded) {
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
  }
  pthread_mutex_destroy(&l->mu);
  pthread_cond_destroy(&l->cv);
  for (int s = 0; s < 2; s++) {
    free(l->images[s]);
    free(l->labels[s]);
  }
  free(l->order);
  free(l);
}
