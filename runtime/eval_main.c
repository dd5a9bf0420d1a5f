// NAME-eval: the generated forward function over a test set, or over
// single images with --predict. Reports the loss, accuracy, top-k accuracy
// (more than five classes, or --top-k), sklearn's classification report
// (precision, recall and F1 per class, macro and weighted averages) and the
// confusion matrix; binary models (one logit) decide class 1 at a threshold
// on sigmoid(logit).
#include "rt.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#pragma weak xc_prepare_forward // not in the runtime tests' fake models

static const char usage_fmt[] =
    "usage: %s --weights W.safetensors [--data PATH] [--threshold X] [--top-k K] [--json]\n"
    "       [--predict IMAGE|DIR... [--logits]] [--split all|val] [--threads T] [--strict] [--cache]\n"
    "       [--max-image-pixels N] [--profile] [--profile-csv FILE] [--quiet]";

static void print_help(const char *prog, const XcModel *m) {
  printf(usage_fmt, prog);
  printf("\n\nEvaluates model '%s' (%d classes).\n\n"
         "  --weights W        weights a training run wrote (default: %s.safetensors)\n"
         "  --data PATH        test data (default: %s)\n"
         "  --threshold X      binary models: class 1 when sigmoid(logit) > X (default 0.5)\n"
         "  --top-k K          also the share of images whose class is among the K largest\n"
         "                     logits (default: 5 for models of more than 5 classes)\n"
         "  --json             one JSON object: loss, accuracy, top_k_accuracy,\n"
         "                     classification_report (as sklearn's output_dict), confusion_matrix,\n"
         "                     and for binary models precision, recall, f1, threshold\n"
         "  --predict IMAGE|DIR...  class probabilities of each image (softmax, or sigmoid for\n"
         "                     binary models) instead of a test set; a directory stands for\n"
         "                     its JPEG and PNG files, in name order\n"
         "  --logits           with --predict: the logits (9 significant digits, exact for\n"
         "                     float32) instead of the probabilities\n"
         "  --split all|val    folder data with val_split: 'val' evaluates the held-out part\n"
         "                     (the default when the YAML's test folder does not exist)\n"
         "  --threads T        OpenMP threads\n"
         "  --strict           an unreadable image is an error instead of being skipped\n"
         "  --cache            keep decoded photos in PARENT/.xentcc-cache beside a photo folder\n"
         "                     (or ~/.cache/xentcc) so later runs skip decoding\n"
         "  --max-image-pixels N  photos of more pixels warn, of more than twice it are refused\n"
         "                     as decompression bombs (default %d, PIL's)\n"
         "  --profile          a table of the time, GFLOP/s and share of the machine's FMA\n"
         "                     peak, and GB/s, of every generated kernel of the evaluation\n"
         "  --profile-csv FILE the same numbers, every kernel, as CSV\n"
         "  --quiet            no progress messages\n"
      "  --version          the xentcc that built this executable\n"
      "Options take their value as --opt V or --opt=V.\n\n"
         "The whole test set is evaluated: the last partial batch is padded and the\n"
         "padding ignored.\n",
         m->name, m->nclasses, m->name,
         *m->test_path && (xc_is_dir(m->test_path) || xc_is_file(m->test_path)) ? m->test_path
         : *m->train_path ? xc_format("%s (held-out part)", m->train_path)
                          : "none: pass --data",
         XC_MAX_IMAGE_PIXELS);
}

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

// The images --predict names: files as given, and for a directory its
// regular JPEG and PNG files (by name, in byte order; others are skipped).
static char **predict_inputs(char **args, int nargs, int *count) {
  char **files = NULL;
  int n = 0;
  for (int a = 0; a < nargs; a++) {
    if (!xc_is_dir(args[a])) {
      files = xc_realloc(files, sizeof *files * (n + 1));
      files[n++] = xc_strdup(args[a]);
      continue;
    }
    DIR *d = opendir(args[a]);
    if (!d)
      xc_die("check the path", "--predict: cannot read directory %s: %s", args[a],
             strerror(errno));
    int first = n;
    for (struct dirent *e; (e = readdir(d));) {
      if (e->d_name[0] == '.' || !xc_is_image_name(e->d_name))
        continue;
      char *path = xc_join(args[a], e->d_name);
      struct stat st;
      if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        free(path);
        continue;
      }
      files = xc_realloc(files, sizeof *files * (n + 1));
      files[n++] = path;
    }
    closedir(d);
    if (n == first)
      xc_die("--predict takes JPEG or PNG files, or directories holding some",
             "--predict: %s holds no .jpg, .jpeg or .png file", args[a]);
    qsort(files + first, n - first, sizeof *files, xc_cmp_str);
  }
  *count = n;
  return files;
}

// Class probabilities of each image (with data.test_augment, from the logits
// averaged with its mirror's); a file that does not decode is reported and
// the exit status is 1.
static int predict(const XcModel *m, const float *params, const float *state, void *ws,
                   char **files, int n, bool json, bool logits_out, double threshold,
                   int max_pixels) {
  int b = m->batch_size, k = m->outputs == 1 ? 2 : m->outputs, status = 0;
  size_t floats = (size_t)m->channels * m->height * m->width;
  float *images = xc_alloc_floats((int64_t)b * floats);
  float *logits = xc_alloc_floats((int64_t)b * m->outputs);
  float *spare = m->test_flip ? xc_alloc_floats((int64_t)b * m->outputs) : NULL;
  uint8_t *chw = xc_malloc(floats);
  double *prob = xc_malloc(sizeof(double) * k);
  Transform t = xc_model_transform(m, false);
  int *ok = xc_calloc(n + 1, sizeof(int));
  if (xc_prepare_forward) // once, for every batch below
    xc_prepare_forward(params, state, NULL, NULL, ws);
  if (json)
    printf("{\"threshold\": %.17g, \"predictions\": [", threshold);
  bool first = true;
  for (int start = 0; start < n; start += b) {
    int real = n - start < b ? n - start : b;
    memset(images, 0, (size_t)b * floats * sizeof(float));
    for (int i = 0; i < real; i++) {
      Image img;
      char *err;
      ok[start + i] = xc_image_load_max(files[start + i], max_pixels, &img, &err);
      if (!ok[start + i]) {
        xc_warn("--predict takes JPEG or PNG files", "%s: %s", files[start + i], err);
        status = 1;
        continue;
      }
      if ((int64_t)img.w * img.h > xc_pixel_limit(max_pixels))
        xc_warn("--max-image-pixels N sets the limit",
                "%s: %lld pixels, over the limit of %lld (a decompression bomb?); read anyway",
                files[start + i], (long long)img.w * img.h, (long long)xc_pixel_limit(max_pixels));
      xc_image_to_chw(&img, m->channels, m->height, m->width, chw);
      free(img.px);
      xc_transform(&t, chw, m->channels, m->height, m->width, images + i * floats, NULL);
    }
    xc_forward_eval(m, xc_forward, params, state, images, logits, spare, ws);
    for (int i = 0; i < real; i++) {
      if (!ok[start + i])
        continue;
      const float *l = logits + (size_t)i * m->outputs;
      if (m->outputs == 1) {
        prob[1] = xc_sigmoid(l[0]);
        prob[0] = 1 - prob[1];
      } else {
        xc_softmax(l, k, prob);
      }
      int pred = xc_predict(m, l, threshold);
      if (logits_out && json) {
        printf("%s{\"file\": ", first ? "" : ", ");
        json_str(files[start + i]);
        printf(", \"predicted\": ");
        json_str(m->class_names[pred]);
        printf(", \"logits\": [");
        for (int c = 0; c < m->outputs; c++)
          printf("%s%.9g", c ? ", " : "", l[c]);
        printf("]}");
      } else if (logits_out) {
        printf("%s: %s  (logits", files[start + i], m->class_names[pred]);
        for (int c = 0; c < m->outputs; c++)
          printf(" %.9g", l[c]);
        printf(")\n");
      } else if (json) {
        printf("%s{\"file\": ", first ? "" : ", ");
        json_str(files[start + i]);
        printf(", \"predicted\": ");
        json_str(m->class_names[pred]);
        printf(", \"probabilities\": {");
        for (int c = 0; c < k; c++) {
          printf("%s", c ? ", " : "");
          json_str(m->class_names[c]);
          printf(": %.9g", prob[c]);
        }
        printf("}}");
      } else {
        printf("%s: %s", files[start + i], m->class_names[pred]);
        for (int c = 0; c < k; c++)
          printf("%s%s %.4f", c ? ", " : "  (", m->class_names[c], prob[c]);
        printf(")\n");
      }
      first = false;
    }
  }
  if (json)
    printf("]}\n");
  free(images), free(logits), free(spare), free(chw), free(prob), free(ok);
  return status;
}

int xc_eval_main(int argc, char **argv) {
  xc_passive_wait(argv);
  const XcModel *m = &xc_model;
  char *stem = xc_model_stem(argc > 0 ? argv[0] : m->name, "-eval");
  xc_prog = argc > 0 ? xc_basename(argv[0]) : "eval";
  const char *weights = NULL, *data = NULL, *split = NULL;
  double threshold = 0.5;
  bool json = false, strict = false, quiet = false, threshold_given = false, cache = false;
  bool profile = false, logits_out = false;
  const char *profile_csv = NULL;
  int threads = 0, max_pixels = 0, top_k = -1;
  char **predict_files = NULL;
  int npredict = 0;
  char *usage = xc_format(usage_fmt, xc_prog);
  Args a = {.argc = argc, .argv = argv, .i = 1, .usage = usage};
  for (; a.i < argc; a.i++) {
    if (arg_flag(&a, "--help") || arg_flag(&a, "-h")) {
      print_help(xc_prog, m);
      free(stem), free(usage);
      return 0;
    } else if (arg_flag(&a, "--version")) {
      xc_print_version(m);
      free(stem), free(usage);
      return 0;
    } else if (arg_opt(&a, "--weights")) {
      weights = a.value;
    } else if (arg_opt(&a, "--data")) {
      data = a.value;
    } else if (arg_opt(&a, "--threshold")) {
      threshold = arg_double(&a, 0, 1);
      threshold_given = true;
    } else if (arg_opt(&a, "--top-k")) {
      top_k = arg_int(&a, 1, 1 << 30);
    } else if (arg_flag(&a, "--json")) {
      json = true;
    } else if (arg_opt(&a, "--split")) {
      split = a.value;
      if (strcmp(split, "all") && strcmp(split, "val"))
        xc_die("write --split all or --split val", "--split: bad value '%s'", split);
    } else if (arg_opt(&a, "--threads")) {
      threads = arg_int(&a, 1, 1024);
    } else if (arg_flag(&a, "--strict")) {
      strict = true;
    } else if (arg_flag(&a, "--cache")) {
      cache = true;
    } else if (arg_opt(&a, "--max-image-pixels")) {
      max_pixels = arg_int(&a, 1, 2147483647);
    } else if (arg_flag(&a, "--profile")) {
      profile = true;
    } else if (arg_opt(&a, "--profile-csv")) {
      profile = true;
      profile_csv = a.value;
    } else if (arg_flag(&a, "--quiet") || arg_flag(&a, "-q")) {
      quiet = true;
    } else if (arg_flag(&a, "--logits")) {
      logits_out = true;
    } else if (arg_flag(&a, "--predict")) {
      // Every following argument that is not an option is an image.
      while (a.i + 1 < argc && strncmp(argv[a.i + 1], "--", 2)) {
        predict_files = xc_realloc(predict_files, sizeof(char *) * (npredict + 1));
        predict_files[npredict++] = argv[++a.i];
      }
      if (!npredict)
        xc_die(a.usage, "--predict needs at least one image file");
    } else {
      arg_unknown(&a);
    }
  }
  if (logits_out && !npredict)
    xc_die("--logits prints the logits of --predict's images: add --predict IMAGE...",
           "--logits applies to --predict only");
  if (threshold_given && m->outputs != 1)
    xc_warn("--threshold applies to binary models only", "model '%s' has %d classes; ignoring it",
            m->name, m->nclasses);
  if (top_k > 0 && m->outputs == 1)
    xc_die("top-k accuracy is for models with one output per class",
           "--top-k: model '%s' has one output (binary classification)", m->name);
  if (top_k > m->outputs)
    xc_die(xc_format("give --top-k from 1 to %d", m->outputs),
           "--top-k %d: model '%s' has only %d classes", top_k, m->name, m->outputs);
  if (top_k < 0)
    top_k = m->outputs > 5 ? 5 : 0;
  char *dflt = NULL;
  if (!weights) {
    dflt = xc_format("%s.safetensors", stem);
    if (!xc_is_file(dflt))
      xc_die(xc_format("pass --weights W.safetensors (%s-train --save writes it)", stem),
             "no weights: %s does not exist", dflt);
    weights = dflt;
  }
  xc_set_threads(threads);
  float *params = xc_alloc_floats(m->param_floats);
  float *state = xc_alloc_floats(m->state_floats);
  xc_init_tensors(state, m->states, m->nstates, 0, 2);
  xc_load_weights(weights, m, params, state, NULL);
  // Weights with NaN or infinities (a diverged run saved by an older
  // xentcc, or written elsewhere) give meaningless metrics: say so.
  const XcTensorInfo *bad = xc_first_nonfinite(params, m->params, m->nparams);
  if (!bad)
    bad = xc_first_nonfinite(state, m->states, m->nstates);
  if (bad)
    xc_warn("the training diverged; train again with a lower --lr",
            "%s: %s holds a NaN or an infinity; the results below mean nothing", weights,
            bad->name);
  void *ws = xc_alloc_floats((m->workspace_bytes + 3) / 4);
  if (npredict) {
    int nfiles;
    char **files = predict_inputs(predict_files, npredict, &nfiles);
    int status = predict(m, params, state, ws, files, nfiles, json, logits_out, threshold,
                         max_pixels);
    for (int i = 0; i < nfiles; i++)
      free(files[i]);
    free(files);
    free(params), free(state), free(ws), free(predict_files);
    free(dflt), free(stem), free(usage);
    return status;
  }

  // The test set: --data, else the YAML's test path, else the held-out part
  // of the training folder.
  if (!data)
    data = xc_is_dir(m->test_path) || xc_is_file(m->test_path) ? m->test_path : m->train_path;
  DataSpec spec = xc_data_spec(m, data, false, strict, quiet);
  spec.cache = cache;
  spec.max_image_pixels = max_pixels;
  if (split)
    spec.split = !strcmp(split, "val") ? XC_SPLIT_VAL : XC_SPLIT_ALL;
  if (spec.split == XC_SPLIT_VAL && spec.val_split <= 0)
    xc_die("the YAML sets no data.val_split", "--split val: model '%s' holds nothing out", m->name);
  double t0 = xc_now();
  Dataset *d = xc_load_dataset(&spec);
  Transform t = xc_model_transform(m, false);
  EvalResult ev;
  if (profile)
    xc_profile_start(m);
  double te = xc_now();
  xc_evaluate(m, xc_forward, params, state, d, &t, ws, threshold, top_k, &ev);
  if (profile)
    xc_profile_report(m, (d->n + m->batch_size - 1) / m->batch_size, "batches",
                      xc_now() - te, profile_csv);
  double secs = xc_now() - t0;
  bool binary = m->outputs == 1;
  const char *const *names = m->class_names;
  Confusion c = ev.conf;
  if (json) {
    eval_print_json(stdout, &ev, names, binary, threshold);
  } else {
    printf("%s on %s%s: %lld images (%.2f s)\n", m->name, d->path,
           spec.split == XC_SPLIT_VAL && strcmp(d->format, "cifar10") && strcmp(d->format, "idx")
               ? " (held-out part)"
               : "",
           (long long)d->n, secs);
    printf("Accuracy of the network on the %lld test images: %.2f %%\n", (long long)c.total,
           100 * conf_accuracy(&c));
    if (!isnan(ev.loss))
      printf("loss %.6f (the YAML's loss, as in training)\n", ev.loss);
    if (top_k)
      printf("top-%d accuracy %.2f %%\n", top_k, 100 * ev.top_k_accuracy);
    if (binary) {
      double p, r, f1;
      conf_binary(&c, &p, &r, &f1);
      printf("threshold %.3g (positive class: %s)\nprecision %.4f  recall %.4f  F1 %.4f\n",
             threshold, names[1], p, r, f1);
    }
    putchar('\n');
    conf_print_report(stdout, &c, names);
    putchar('\n');
    conf_print(stdout, &c, names);
  }
  conf_free(&c);
  xc_free_dataset(d);
  free(params), free(state), free(ws);
  free(dflt), free(stem), free(usage);
  return 0;
}
