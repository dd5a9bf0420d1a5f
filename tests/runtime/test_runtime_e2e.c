// End-to-end tests of NAME-train and NAME-eval on the fake models: the
// executables run as a user runs them, on photo folders, CIFAR files and
// IDX files written into the build tree. Checks the command-line contract
// (flags, default output, --log CSV, --save, --json, --predict), that
// training learns, determinism, --resume (the history and the early-stopping
// state included), --save-best, --patience, and the error messages.
#define _GNU_SOURCE // memmem
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char *const rgb_names[] = {"red", "green", "blue"};
static const char *const cd_names[] = {"cat", "dog"};

static char *slurp(const char *path) { return read_all(path, NULL); }

// Byte for byte, binary files included (a safetensors file has NULs in its
// first eight bytes, so string comparison would stop there).
static bool same_file(const char *dir, const char *a, const char *b) {
  long na, nb;
  char *x = read_all(xc_join(dir, a), &na), *y = read_all(xc_join(dir, b), &nb);
  return na > 0 && na == nb && !memcmp(x, y, na);
}

typedef struct {
  int status;
  char *out, *err;
} Run;

// Runs XC_BIN_DIR/exe in dir with the arguments that follow (an argument
// vector, no shell): run(dir, "fake-train", "--data", "train").
#define run(dir, exe, ...) run_argv(dir, exe, (const char *[]){__VA_ARGS__, NULL})
static Run run_argv(const char *dir, const char *exe, const char **args) {
  char *out = xc_join(dir, "stdout.txt"), *err = xc_join(dir, "stderr.txt");
  int n = 0;
  while (args[n])
    n++;
  const char **argv = calloc(n + 2, sizeof *argv);
  argv[0] = xc_join(XC_BIN_DIR, exe);
  memcpy(argv + 1, args, n * sizeof *argv);
  Run r = {td_run(dir, argv, out, err), slurp(out), slurp(err)};
  return r;
}

#define ASSERT_OK(r)                                                                               \
  ck_assert_msg((r).status == 0, "status %d\nstdout:\n%s\nstderr:\n%s", (r).status, (r).out,       \
                (r).err)
#define ASSERT_HAS(text, want)                                                                     \
  ck_assert_msg(strstr(text, want), "expected '%s' in:\n%s", want, text)

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

// A working directory with train/ and test/ photo folders (3 classes).
static char *rgb_workdir(int per_class) {
  char *dir = td_mkdtemp(TEST_BINARY_DIR);
  char *train = xc_join(dir, "train"), *test = xc_join(dir, "test");
  td_mkdir(train);
  td_mkdir(test);
  td_write_photo_folder(train, rgb_names, 3, per_class, 12, 10);
  td_write_photo_folder(test, rgb_names, 3, 3, 16, 16);
  return dir;
}

START_TEST(train_then_eval) {
  char *dir = rgb_workdir(8); // 24 photos: 6 batches of 4 per epoch
  Run r =
      run(dir, "fake-train", "--data", "train", "--epochs", "3", "--log", "log.csv", "--seed", "1");
  ASSERT_OK(r);
  // The PyTorch tutorial's lines every log_every (2) iterations.
  ASSERT_HAS(r.out, "[1,     2] loss: ");
  ASSERT_HAS(r.out, "[3,     6] loss: ");
  // Evaluated after each epoch on the test/ folder next to train/; the
  // training accuracy comes from the step's own logits.
  ASSERT_HAS(r.out, "epoch 3: train loss ");
  ASSERT_HAS(r.out, ", accuracy 100.00%; test loss 0.");
  ASSERT_HAS(r.out, ", accuracy 100.00% (9 images); lr 0.05, ");
  ASSERT_HAS(r.out, "images/s");
  // Where everything went.
  ASSERT_HAS(r.out, "saved weights to fake.safetensors, optimizer state and progress to "
                    "fake.optim.safetensors\n");
  ASSERT_HAS(r.out, "history: fake.history.csv, curves: fake.curves.svg\n");
  ASSERT_HAS(r.out, "per-step log: log.csv\n");
  ASSERT_HAS(r.out, "s waiting for batches");
  char *log = slurp(xc_join(dir, "log.csv"));
  ck_assert_int_eq(strncmp(log, "step,epoch,loss,lr,skipped\n", 27), 0);
  ck_assert_int_eq(count_lines(log), 1 + 18);
  int step, epoch;
  double loss, lr;
  ck_assert_int_eq(sscanf(strchr(log, '\n') + 1, "%d,%d,%lf,%lf", &step, &epoch, &loss, &lr), 4);
  ck_assert(step == 1 && epoch == 1 && loss > 0.5 && fabs(lr - 0.05) < 1e-8);
  const char *last = log + strlen(log) - 2;
  while (*last != '\n')
    last--;
  double last_loss;
  ck_assert_int_eq(sscanf(last + 1, "%d,%d,%lf", &step, &epoch, &last_loss), 3);
  ck_assert(step == 18 && epoch == 3);
  ck_assert_msg(last_loss < loss, "loss went from %g to %g", loss, last_loss);
  // Nine significant digits at least.
  char *third = strchr(strchr(log, '\n') + 1, ',');
  third = strchr(third + 1, ',') + 1;
  int digits = 0;
  for (char *p = third; *p != ','; p++)
    digits += *p >= '0' && *p <= '9';
  ck_assert_int_ge(digits, 9);
  ck_assert(xc_is_file(xc_join(dir, "fake.safetensors")));
  ck_assert(xc_is_file(xc_join(dir, "fake.optim.safetensors")));
  char *svg = slurp(xc_join(dir, "fake.curves.svg"));
  ASSERT_HAS(svg, "<svg");
  ASSERT_HAS(svg, ">loss</text>");
  ASSERT_HAS(svg, ">accuracy</text>");
  ASSERT_HAS(svg, ">learning rate</text>");
  ASSERT_HAS(svg, "<title>test, epoch 3: ");
  char *hist = slurp(xc_join(dir, "fake.history.csv"));
  ck_assert_int_eq(count_lines(hist), 4);
  const char *header = "epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,lr,"
                       "images_per_s,seconds\n1,6,";
  ck_assert_int_eq(strncmp(hist, header, strlen(header)), 0);
  // The last row: epoch 3 at step 18, every column filled; the validation
  // loss is NAME-eval's on the same data.
  double h[9];
  const char *row3 = strstr(hist, "\n3,18,") + 1;
  ck_assert_int_eq(sscanf(row3, "%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf", &h[0], &h[1], &h[2], &h[3],
                          &h[4], &h[5], &h[6], &h[7], &h[8]),
                   9);
  ck_assert(h[2] >= 0 && h[3] == 1 && h[4] > 0 && h[5] == 1 && h[6] == 0.05 && h[7] > 0 && h[8] > 0);

  r = run(dir, "fake-eval", "--weights", "fake.safetensors", "--data", "test");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "Accuracy of the network on the 9 test images: 100.00 %");
  ASSERT_HAS(r.out, "green");
  ASSERT_HAS(r.out, "confusion matrix");
  r = run(dir, "fake-eval", "--weights", "fake.safetensors", "--data", "test", "--json");
  ASSERT_OK(r);
  ck_assert_int_eq(count_lines(r.out), 1);
  ASSERT_HAS(r.out, "{\"accuracy\": 1,");
  ASSERT_HAS(r.out, "\"confusion_matrix\": [[3, 0, 0], [0, 3, 0], [0, 0, 3]]");
  ASSERT_HAS(r.out, "\"macro avg\": {\"precision\": 1, \"recall\": 1, \"f1-score\": 1, "
                    "\"support\": 9}");
  ck_assert(!strstr(r.out, "top_k")); // 3 classes: only when asked
  double eval_loss;
  ck_assert_int_eq(sscanf(strstr(r.out, "\"loss\": ") + 8, "%lf", &eval_loss), 1);
  ck_assert_msg(eval_loss == h[4], "history's val_loss %.17g, NAME-eval's %.17g", h[4], eval_loss);
  r = run(dir, "fake-eval", "--data", "test", "--top-k", "2");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "top-2 accuracy 100.00 %");
  ASSERT_HAS(r.out, "       green    1.0000    1.0000    1.0000         3\n");
  ASSERT_HAS(r.out, "weighted avg    1.0000    1.0000    1.0000         9\n");
  r = run(dir, "fake-eval", "--data", "test", "--top-k", "4");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--top-k 4: model 'fake' has only 3 classes");
  // Default weights file; --predict on two photos.
  r = run(dir, "fake-eval", "--predict", "test/red.0.jpg", "test/blue.1.png");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "test/red.0.jpg: red  (red ");
  ASSERT_HAS(r.out, "test/blue.1.png: blue  (red ");
  r = run(dir, "fake-eval", "--predict", "test/red.0.jpg", "--json");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "\"predicted\": \"red\"");
}
END_TEST

// --cache: the first run writes the decoded photos beside train/ and test/
// (in the working directory's .xentcc-cache, not inside the folders); runs
// from the cache train and evaluate exactly as runs that decode.
START_TEST(cache_flag) {
  char *dir = rgb_workdir(8);
  Run r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--log", "a.csv", "--save",
              "a.safetensors", "--quiet");
  ASSERT_OK(r);
  ck_assert(!xc_is_dir(xc_join(dir, ".xentcc-cache")));
  for (int i = 0; i < 2; i++) {
    r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--log", "b.csv", "--save",
            "b.safetensors", "--cache", "--quiet");
    ASSERT_OK(r);
    ck_assert_str_eq(slurp(xc_join(dir, "b.csv")), slurp(xc_join(dir, "a.csv")));
  }
  ck_assert(xc_is_dir(xc_join(dir, ".xentcc-cache")));
  ck_assert(!xc_is_dir(xc_join(dir, "train/.xentcc-cache")));
  Run plain = run(dir, "fake-eval", "--weights", "a.safetensors", "--data", "test", "--json");
  ASSERT_OK(plain);
  for (int i = 0; i < 2; i++) {
    r = run(dir, "fake-eval", "--weights", "b.safetensors", "--data", "test", "--json", "--cache");
    ASSERT_OK(r);
    ck_assert_str_eq(r.out, plain.out);
  }
}
END_TEST

START_TEST(determinism_steps_and_resume) {
  char *dir = rgb_workdir(8);
  Run r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--log", "a.csv", "--save",
              "a.safetensors", "--quiet");
  ASSERT_OK(r);
  ck_assert_str_eq(r.out, "");
  r = run(dir, "fake-train", "--data=train", "--epochs=2", "--log=b.csv", "--save=b.safetensors",
          "--quiet");
  ASSERT_OK(r);
  char *a = slurp(xc_join(dir, "a.csv")), *b = slurp(xc_join(dir, "b.csv"));
  ck_assert_str_eq(a, b);
  ck_assert(same_file(dir, "a.safetensors", "b.safetensors"));
  // Another seed, another run; --no-shuffle is a third.
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--log", "c.csv", "--seed", "9",
          "--quiet", "--save", "c.safetensors");
  ASSERT_OK(r);
  ck_assert_str_ne(a, slurp(xc_join(dir, "c.csv")));
  r = run(dir, "fake-train", "--data", "train", "--steps", "5", "--log", "d.csv", "--no-shuffle",
          "--quiet", "--save", "d.safetensors");
  ASSERT_OK(r);
  ck_assert_int_eq(count_lines(slurp(xc_join(dir, "d.csv"))), 6);
  // --steps beyond one epoch runs on into the next epochs.
  r = run(dir, "fake-train", "--data", "train", "--steps", "14", "--log", "e.csv", "--quiet",
          "--save", "e.safetensors");
  ASSERT_OK(r);
  char *e = slurp(xc_join(dir, "e.csv"));
  ck_assert_int_eq(count_lines(e), 15);
  ASSERT_HAS(e, "\n14,3,");
  // 2 epochs = 1 epoch, then --resume for the second: the same weights.
  r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--save", "r.safetensors",
          "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--save", "r.safetensors",
          "--resume", "--log", "r.csv");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "[2,     2] loss:");
  ck_assert_int_eq(count_lines(slurp(xc_join(dir, "r.csv"))), 1 + 6);
  ck_assert(same_file(dir, "a.safetensors", "r.safetensors"));
  // Stopped mid-epoch (step 8 of 12), resumed to the end: also the same.
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--steps", "8", "--save",
          "m.safetensors", "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--save", "m.safetensors",
          "--resume", "--quiet");
  ASSERT_OK(r);
  ck_assert(same_file(dir, "a.safetensors", "m.safetensors"));
  // Ctrl-C during step 8 (epoch 2, batch 2): that step finishes, the state is
  // saved and the run exits 130; --resume then ends where the whole run did.
  setenv("FAKE_INTERRUPT_AT", "8", 1);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--save", "n.safetensors", "--log",
          "n.csv");
  unsetenv("FAKE_INTERRUPT_AT");
  ck_assert_msg(r.status == 130, "status %d\n%s", r.status, r.err);
  ASSERT_HAS(r.err, "fake-train: interrupted at step 8 (epoch 2, batch 2)");
  ASSERT_HAS(r.err, "hint: run again with --resume");
  ASSERT_HAS(r.out, "saved weights to n.safetensors");
  ck_assert_int_eq(count_lines(slurp(xc_join(dir, "n.csv"))), 1 + 8);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "2", "--save", "n.safetensors",
          "--resume", "--quiet");
  ASSERT_OK(r);
  ck_assert(same_file(dir, "a.safetensors", "n.safetensors"));
  ck_assert(same_file(dir, "a.optim.safetensors", "n.optim.safetensors"));
  // --init from a run's weights starts there: the first loss is lower.
  r = run(dir, "fake-train", "--data", "train", "--steps", "1", "--init", "a.safetensors", "--log",
          "i.csv", "--quiet", "--save", "i.safetensors");
  ASSERT_OK(r);
  double l0, l1;
  sscanf(strchr(a, '\n') + 1, "%*d,%*d,%lf", &l0);
  sscanf(strchr(slurp(xc_join(dir, "i.csv")), '\n') + 1, "%*d,%*d,%lf", &l1);
  ck_assert_msg(l1 < l0, "--init did not start from trained weights: %g vs %g", l1, l0);
}
END_TEST

// A history without its timing columns (the last two of each line).
static char *without_timings(const char *csv) {
  char *out = xc_strdup(csv), *w = out;
  for (const char *line = csv; *line;) {
    const char *end = strchr(line, '\n');
    const char *cut = line;
    for (int commas = 0; cut < end && commas < 7; cut++)
      commas += *cut == ',';
    size_t n = (size_t)(cut - line) - (cut < end);
    memcpy(w, line, n);
    w += n;
    *w++ = '\n';
    line = end + 1;
  }
  *w = '\0';
  return out;
}

// The history continues across --resume: runs stopped after epoch 1, and
// mid-epoch 2 by --steps, each resumed to 3 epochs, end with the
// uninterrupted run's history (every column but the timings) and its very
// checkpoint, which holds the history. A --steps run evaluates at its end
// and writes a row for the part of the epoch it trained.
START_TEST(history_across_resume) {
  char *dir = rgb_workdir(8); // 6 steps per epoch
  Run r = run(dir, "fake-train", "--data", "train", "--epochs", "3", "--save", "a.safetensors", "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--save", "b.safetensors", "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-train", "--data", "train", "--epochs", "3", "--save", "b.safetensors", "--resume");
  ASSERT_OK(r);
  ck_assert(!strstr(r.out, "epoch 1: ")); // this run trained epochs 2 and 3
  ASSERT_HAS(r.out, "history: b.history.csv, curves: b.curves.svg\n");
  r = run(dir, "fake-train", "--data", "train", "--epochs", "3", "--steps", "8", "--save", "c.safetensors");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "epoch 1.33333: train loss ");
  ASSERT_HAS(r.out, "; test loss ");
  char *c = slurp(xc_join(dir, "c.history.csv"));
  ck_assert_int_eq(count_lines(c), 3);
  ASSERT_HAS(c, "\n1.3333333333333333,8,");
  ASSERT_HAS(r.out, "history: c.history.csv, curves: c.curves.svg\n");
  ASSERT_HAS(slurp(xc_join(dir, "c.curves.svg")), "<title>train, epoch 1.33333: ");
  r = run(dir, "fake-train", "--data", "train", "--epochs", "3", "--save", "c.safetensors", "--resume", "--quiet");
  ASSERT_OK(r);
  char *a = without_timings(slurp(xc_join(dir, "a.history.csv")));
  ck_assert_int_eq(count_lines(a), 4);
  ck_assert_str_eq(without_timings(slurp(xc_join(dir, "b.history.csv"))), a);
  ck_assert_str_eq(without_timings(slurp(xc_join(dir, "c.history.csv"))), a);
  ck_assert(same_file(dir, "a.optim.safetensors", "b.optim.safetensors"));
  ck_assert(same_file(dir, "a.optim.safetensors", "c.optim.safetensors"));
  // The timings of the epochs before --resume come from the old file.
  ck_assert(!strstr(slurp(xc_join(dir, "b.history.csv")), ",,"));
}
END_TEST

// A test folder whose photos are named after the wrong classes: the better
// the model fits train/, the worse its validation loss.
static char *mislabelled_workdir(void) {
  static const char *const rotated[] = {"green", "blue", "red"};
  char *dir = td_mkdtemp(TEST_BINARY_DIR);
  char *train = xc_join(dir, "train"), *test = xc_join(dir, "test");
  td_mkdir(train);
  td_mkdir(test);
  td_write_photo_folder(train, rgb_names, 3, 8, 12, 10);
  td_write_photo_folder(test, rotated, 3, 3, 16, 16);
  return dir;
}

// --save-best keeps the best epoch's weights and --patience stops as Keras's
// EarlyStopping does; runs stopped after epoch 2 or mid-epoch 2 and resumed
// stop at the same epoch as the uninterrupted one, with the same files.
START_TEST(save_best_and_patience) {
  char *dir = mislabelled_workdir();
#define FLAGS "--data", "train", "--save-best", "val_loss", "--patience", "2"
  Run r = run(dir, "fake-train", FLAGS, "--epochs", "10", "--save", "a.safetensors");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "epoch 3: ");
  ck_assert(!strstr(r.out, "epoch 4: "));
  ASSERT_HAS(r.out, "early stopping: val_loss has not improved for 2 epochs; the best was ");
  ASSERT_HAS(r.out, " at epoch 1\n");
  ASSERT_HAS(r.out, "best epoch: 1 (val_loss ");
  ASSERT_HAS(r.out, "), weights in a.best.safetensors\n");
  ASSERT_HAS(r.out, "stopped early after epoch 3 (--patience 2)\n");
  ck_assert_int_eq(count_lines(slurp(xc_join(dir, "a.history.csv"))), 4);
  // The best file is epoch 1's weights, saying so.
  long n;
  char *bytes = read_all(xc_join(dir, "a.best.safetensors"), &n);
  ck_assert(n > 8 && memmem(bytes + 8, n - 8, "\"epoch\":\"1\"", 11));
  r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--save", "one.safetensors", "--quiet");
  ASSERT_OK(r);
  Run best = run(dir, "fake-eval", "--weights", "a.best.safetensors", "--data", "train", "--json");
  ASSERT_OK(best);
  r = run(dir, "fake-eval", "--weights", "one.safetensors", "--data", "train", "--json");
  ASSERT_OK(r);
  ck_assert_str_eq(best.out, r.out);
  // Interrupted after epoch 2 (the counter at 1), and mid-epoch 2.
  for (int i = 0; i < 2; i++) {
    char *b = xc_format("b%d.safetensors", i);
    r = i == 0 ? run(dir, "fake-train", FLAGS, "--epochs", "2", "--save", b, "--quiet")
               : run(dir, "fake-train", FLAGS, "--epochs", "10", "--steps", "9", "--save", b,
                     "--quiet");
    ASSERT_OK(r);
    r = run(dir, "fake-train", FLAGS, "--epochs", "10", "--save", b, "--resume");
    ASSERT_OK(r);
    ASSERT_HAS(r.out, "epoch 3: ");
    ck_assert(!strstr(r.out, "epoch 4: "));
    ASSERT_HAS(r.out, "stopped early after epoch 3 (--patience 2)\n");
    ck_assert_str_eq(without_timings(slurp(xc_join(dir, xc_format("b%d.history.csv", i)))),
                     without_timings(slurp(xc_join(dir, "a.history.csv"))));
    ck_assert(same_file(dir, "a.optim.safetensors", xc_format("b%d.optim.safetensors", i)));
    ck_assert(same_file(dir, "a.best.safetensors", xc_format("b%d.best.safetensors", i)));
  }
  // A finished early stop stays finished; a larger --patience goes on.
  r = run(dir, "fake-train", FLAGS, "--epochs", "10", "--save", "a.safetensors", "--resume");
#undef FLAGS
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "error: a.safetensors stopped early: val_loss has not improved for 2 epochs "
                    "since epoch 1\nhint: pass a larger --patience");
  r = run(dir, "fake-train", "--data", "train", "--save-best", "val_loss", "--patience", "3",
          "--epochs", "10", "--save", "a.safetensors", "--resume", "--quiet");
  ASSERT_OK(r);
  ck_assert_int_eq(count_lines(slurp(xc_join(dir, "a.history.csv"))), 5);
  // val_accuracy: higher is better; here it never beats epoch 1's.
  r = run(dir, "fake-train", "--data", "train", "--save-best", "val_accuracy", "--patience", "1",
          "--epochs", "10", "--save", "v.safetensors");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "early stopping: val_accuracy has not improved for 1 epochs");
  // Both need the evaluation after each epoch.
  r = run(dir, "fake-train", "--data", "train", "--save-best", "val_loss", "--no-eval");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--save-best val_loss needs an evaluation after each epoch");
  ASSERT_HAS(r.err, "hint: drop --no-eval");
  r = run(dir, "fake-train", "--data", "test", "--patience", "2");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--patience val_loss needs an evaluation after each epoch");
  r = run(dir, "fake-train", "--data", "train", "--save-best", "loss");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--save-best loss: unknown metric\nhint: write --save-best val_loss or");
}
END_TEST

// --predict takes files, directories (their regular JPEG and PNG files, in
// name order) or both.
START_TEST(predict_directory) {
  char *dir = rgb_workdir(2);
  Run r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--quiet");
  ASSERT_OK(r);
  // Not images, or not regular files: skipped.
  td_mkdir(xc_join(dir, "test/folder.jpg"));
  td_write_bytes(xc_join(dir, "test/notes.txt"), "hello", 5);
  ck_assert_int_eq(mkfifo(xc_join(dir, "test/pipe.png"), 0600), 0);
  r = run(dir, "fake-eval", "--predict", "test");
  ASSERT_OK(r);
  ck_assert_int_eq(count_lines(r.out), 9);
  ck_assert_int_eq(strncmp(r.out, "test/blue.0.jpg: ", 17), 0);
  ASSERT_HAS(r.out, "\ntest/red.2.jpg: red ");
  r = run(dir, "fake-eval", "--predict", "train/green.1.png", "test", "--json");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "[{\"file\": \"train/green.1.png\", \"predicted\": \"green\"");
  ASSERT_HAS(r.out, "{\"file\": \"test/blue.0.jpg\"");
  td_mkdir(xc_join(dir, "empty"));
  r = run(dir, "fake-eval", "--predict", "empty");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--predict: empty holds no .jpg, .jpeg or .png file");
  ck_assert(!strstr(r.err, "is empty"));
}
END_TEST

START_TEST(other_formats) {
  char *dir = td_mkdtemp(TEST_BINARY_DIR);
  // CIFAR-10 binary (3 classes of this model within labels 0..2), resized to
  // 8x8: the fake model says data: {convert: rgb, resize: true}.
  char *cifar = xc_join(dir, "cifar");
  td_mkdir(cifar);
  td_write_cifar(xc_join(cifar, "data_batch_1.bin"), 12, 3, 0);
  td_write_cifar(xc_join(cifar, "test_batch.bin"), 6, 3, 50);
  Run r = run(dir, "fake-train", "--data", "cifar", "--epochs", "4", "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-eval", "--weights", "fake.safetensors", "--data", "cifar", "--json");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "\"samples\": 6");
  // IDX, gzip: grey images repeated into 3 channels.
  char *idx = xc_join(dir, "idx");
  td_mkdir(idx);
  td_write_idx(idx, "train", 8, 8, 3, true);
  td_write_idx(idx, "t10k", 5, 8, 3, true);
  r = run(dir, "fake-train", "--data", "idx", "--epochs", "1", "--quiet");
  ASSERT_OK(r);
  r = run(dir, "fake-eval", "--data", "idx");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "on the 5 test images");
}
END_TEST

START_TEST(binary_model) {
  char *dir = td_mkdtemp(TEST_BINARY_DIR);
  char *train = xc_join(dir, "train");
  td_mkdir(train);
  td_write_photo_folder(train, cd_names, 2, 10, 20, 14);
  td_write_bytes(xc_join(train, "dog.broken.jpg"), "\xff\xd8\xff\xe0 oops", 9);
  // val_split 0.25 and no test folder: 15 photos train, 5 validate.
  Run r = run(dir, "fake-bin-train", "--data", "train", "--epochs", "3", "--log", "log.csv");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "15 samples");
  ASSERT_HAS(r.out, "held out");
  ASSERT_HAS(r.err, "skipping");
  ASSERT_HAS(r.err, "dog.broken.jpg");
  ASSERT_HAS(r.err, "skipped 1 unreadable file");
  ASSERT_HAS(r.out, "; validation loss ");
  // The lr column shows what the step was given: StepLR(1, 0.5) from 0.05.
  char *log = slurp(xc_join(dir, "log.csv"));
  ASSERT_HAS(log, "\n1,1,");
  ASSERT_HAS(log, ",0.0250000004,0\n");
  ASSERT_HAS(log, ",0.0125000002,0\n");
  char *hist = slurp(xc_join(dir, "fake-bin.history.csv"));
  ASSERT_HAS(hist, ",lr,images_per_s,seconds\n");
  ASSERT_HAS(hist, ",0.0125,"); // the float the step used, shortest
  ASSERT_HAS(hist, "\n3,9,");
  r = run(dir, "fake-bin-eval", "--weights", "fake-bin.safetensors", "--data", "train", "--json");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "\"samples\": 5");
  ASSERT_HAS(r.out, "\"precision\": ");
  ASSERT_HAS(r.out, "\"recall\": ");
  ASSERT_HAS(r.out, "\"f1\": ");
  ASSERT_HAS(r.out, "\"threshold\": 0.5");
  r = run(dir, "fake-bin-eval", "--data", "train", "--split", "all", "--threshold", "0.9");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "on the 20 test images");
  ASSERT_HAS(r.out, "precision");
  ASSERT_HAS(r.out, "threshold 0.9");
  r = run(dir, "fake-bin-eval", "--predict", "train/cat.0.jpg");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "(cat 0.");
  ASSERT_HAS(r.out, ", dog 0.");
  r = run(dir, "fake-bin-train", "--data", "train", "--epochs", "1", "--strict");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "dog.broken.jpg");
}
END_TEST

START_TEST(command_line_errors) {
  char *dir = rgb_workdir(2);
  Run r = run(dir, "fake-train", "--data", "no/such/dir");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "fake-train: error: data path no/such/dir does not exist");
  ASSERT_HAS(r.err, "hint:");
  r = run(dir, "fake-train", "--frobnicate");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "unknown option '--frobnicate'");
  ASSERT_HAS(r.err, "usage: fake-train [--data PATH]");
  r = run(dir, "fake-train", "--data", "train", "--batch-size", "7");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "compiled for batch size 4");
  ASSERT_HAS(r.err, "batch_size: 7");
  r = run(dir, "fake-train", "--data", "train", "--epochs", "zero");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--epochs: bad value 'zero'");
  r = run(dir, "fake-train", "--data");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "option --data needs a value");
  r = run(dir, "fake-train", NULL);
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "no data");
  // A --save directory that cannot take checkpoints fails before training.
  r = run(dir, "fake-train", "--data", "train", "--save", "no/such/dir/w.safetensors");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "cannot write checkpoints next to no/such/dir/w.safetensors");
  ck_assert_msg(!strstr(r.out, "training fake"), "trained first:\n%s", r.out);
  // Too few samples for one batch.
  char *tiny = xc_join(dir, "tiny");
  td_mkdir(tiny);
  td_write_photo_folder(tiny, rgb_names, 1, 3, 8, 8);
  r = run(dir, "fake-train", "--data", "tiny");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "3 samples, fewer than one batch of 4");
  // --init with a file of another model.
  float z[400] = {0};
  int64_t wd[2] = {3, 100}, bd[1] = {3};
  StTensor t[] = {{"fc.weight", 2, wd, z, NULL}, {"fc.bias", 1, bd, z, NULL}};
  ck_assert(st_write(xc_join(dir, "other.safetensors"), t, 2, NULL, 0));
  r = run(dir, "fake-train", "--data", "train", "--init", "other.safetensors");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(
      r.err,
      "other.safetensors: 'fc.weight' has shape [3,100], but the model's parameter is [3,192]");
  r = run(dir, "fake-train", "--data", "train", "--resume");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--resume: no checkpoint");
  r = run(dir, "fake-eval", "--data", "test");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "no weights: fake.safetensors does not exist");
  ASSERT_HAS(r.err, "--weights");
  r = run(dir, "fake-eval", "--weights", "other.safetensors", "--data", "test");
  ck_assert_int_eq(r.status, 1);
  // Nothing above wrote weights; now a good run does.
  r = run(dir, "fake-train", "--data", "train", "--batch-size", "4", "--epochs", "1", "--quiet");
  ASSERT_OK(r);
  ck_assert(xc_is_file(xc_join(dir, "fake.safetensors")));
  r = run(dir, "fake-train", "--help");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "--no-shuffle");
  ASSERT_HAS(r.out, "dropped");
  r = run(dir, "fake-eval", "--help");
  ASSERT_OK(r);
  ASSERT_HAS(r.out, "--predict");
}
END_TEST

// --max-image-pixels N: PIL's limit on pixels per photo, for both
// executables. Training photos are 12x10 (120 pixels), test photos 16x16
// (256): over N they warn, over 2N they are refused like unreadable files.
START_TEST(max_image_pixels_option) {
  char *dir = rgb_workdir(2);
  Run r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--no-eval",
              "--max-image-pixels", "100");
  ASSERT_OK(r);
  ASSERT_HAS(r.err, "120 pixels, over the limit of 100 (a decompression bomb?), as are");
  r = run(dir, "fake-train", "--data", "train", "--epochs", "1", "--max-image-pixels=59");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "12x10, 120 pixels, over twice the limit of 59");
  ASSERT_HAS(r.err, "no readable images");
  r = run(dir, "fake-eval", "--data", "test", "--max-image-pixels", "100");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "16x16, 256 pixels, over twice the limit of 100");
  r = run(dir, "fake-eval", "--data", "test", "--max-image-pixels", "200", "--json");
  ASSERT_OK(r);
  ASSERT_HAS(r.err, "256 pixels, over the limit of 200");
  r = run(dir, "fake-eval", "--predict", "test/red.0.jpg", "--max-image-pixels", "100");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "test/red.0.jpg: the image is 16x16, 256 pixels, over twice the limit of 100");
  r = run(dir, "fake-eval", "--predict", "test/red.0.jpg", "--max-image-pixels", "200");
  ASSERT_OK(r);
  ASSERT_HAS(r.err, "test/red.0.jpg: 256 pixels, over the limit of 200");
  r = run(dir, "fake-train", "--data", "train", "--max-image-pixels", "0");
  ck_assert_int_eq(r.status, 1);
  ASSERT_HAS(r.err, "--max-image-pixels: bad value '0'");
  r = run(dir, "fake-train", "--help");
  ASSERT_HAS(r.out, "--max-image-pixels N");
  ASSERT_HAS(r.out, "89478485");
  r = run(dir, "fake-eval", "--help");
  ASSERT_HAS(r.out, "--max-image-pixels N");
}
END_TEST

int main(void) {
  Suite *s = suite_create("runtime-e2e");
  TCase *tc = tcase_create("e2e");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, train_then_eval);
  tcase_add_test(tc, determinism_steps_and_resume);
  tcase_add_test(tc, history_across_resume);
  tcase_add_test(tc, save_best_and_patience);
  tcase_add_test(tc, predict_directory);
  tcase_add_test(tc, cache_flag);
  tcase_add_test(tc, other_formats);
  tcase_add_test(tc, binary_model);
  tcase_add_test(tc, command_line_errors);
  tcase_add_test(tc, max_image_pixels_option);
  suite_add_tcase(s, tc);
  return run_suite(s);
}
