// Unit tests of the YAML frontend: the shipped models load with the fields
// the runtime needs (sizes, classes, recipe, data paths resolved next to the
// YAML file), their graphs have PyTorch's shapes, and bad files exit with 1.
#include "../common/capture.h"
#include "ir.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static Model *load(const char *name) {
  return load_model(xformat("%s/models/%s.yaml", XENTCC_SOURCE_DIR, name));
}

static const Type *type_of(Graph *g, const char *name) {
  Node *n = graph_find(g, name);
  ck_assert_msg(n != NULL, "no node %%%s", name);
  return &n->type;
}

static void assert_type(Graph *g, const char *name, const char *want) {
  ck_assert_str_eq(type_str(type_of(g, name)), want);
}

static int count_op(Graph *g, OpKind op) {
  int k = 0;
  for (int i = 0; i < g->nnodes; i++)
    k += g->node[i]->op == op;
  return k;
}

START_TEST(cifar10_fields) {
  Model *m = load("cifar10");
  ck_assert_str_eq(m->name, "cifar10");
  ck_assert_int_eq(m->channels, 3);
  ck_assert_int_eq(m->height, 32);
  ck_assert_int_eq(m->width, 32);
  ck_assert_int_eq(m->nclasses, 10);
  ck_assert_str_eq(m->classes[0], "airplane");
  ck_assert_str_eq(m->classes[9], "truck");
  ck_assert_int_eq(m->epochs, 10);
  ck_assert_int_eq(m->batch_size, 32);
  ck_assert(m->shuffle);
  ck_assert(!m->drop_last);
  ck_assert_int_eq(m->seed, 0);
  ck_assert_int_eq(m->log_every, 100);
  ck_assert_str_eq(m->data.format, "imagefolder");
  // Relative data paths are relative to the YAML file's directory.
  ck_assert_str_eq(m->data.train, XENTCC_SOURCE_DIR "/models/../build/data/cifar10/train");
  ck_assert_str_eq(m->data.test, XENTCC_SOURCE_DIR "/models/../build/data/cifar10/test");
  for (int c = 0; c < 3; c++) {
    ck_assert_double_eq(m->data.mean[c], 0.5);
    ck_assert_double_eq(m->data.std[c], 0.5);
  }
  ck_assert_double_eq(m->data.val_split, 0.0);
}
END_TEST

START_TEST(cifar10_graph) {
  Graph *g = load("cifar10")->graph;
  ck_assert_str_eq(g->name, "cifar10");
  assert_type(g, "image", "f32[32,3,32,32]");
  assert_type(g, "label", "i32[32]");
  assert_type(g, "conv1.weight", "f32[6,3,5,5]");
  assert_type(g, "conv1", "f32[32,6,28,28]");
  assert_type(g, "conv2.weight", "f32[16,6,5,5]");
  assert_type(g, "conv2", "f32[32,16,10,10]");
  assert_type(g, "fc1.weight", "f32[120,400]");
  assert_type(g, "fc2.weight", "f32[84,120]");
  assert_type(g, "fc3.weight", "f32[10,84]");
  assert_type(g, "fc3.bias", "f32[10]");
  assert_type(g, "loss", "f32[]");
  ck_assert_int_eq(node_int(graph_find(g, "fc1.weight"), "fan_in"), 400);
  ck_assert_str_eq(node_str(graph_find(g, "conv1.bias"), "init"), "bias_uniform");
  ck_assert_int_eq(g->nret, 2);
  ck_assert_str_eq(g->ret[0]->name, "loss");
  ck_assert_str_eq(g->ret[1]->name, "fc3");
  ck_assert_int_eq(g->ret[0]->op, OP_nll_loss);
  ck_assert_int_eq(count_op(g, OP_param), 10);
  ck_assert_str_eq(graph_str(g, "optimizer", ""), "sgd");
  ck_assert_double_eq(graph_float(g, "lr", 0), 0.001);
  ck_assert_double_eq(graph_float(g, "momentum", 0), 0.9);
  ck_assert_str_eq(graph_str(g, "schedule", ""), "constant");
  // Every node keeps the line of the YAML layer it came from.
  Node *conv1 = graph_find(g, "conv1");
  ck_assert_int_eq(conv1->loc.line, 9);
  ck_assert_int_eq(conv1->loc.col, 5);
  ck_assert(strstr(conv1->loc.file, "cifar10.yaml") != NULL);
}
END_TEST

START_TEST(catdog_fields) {
  Model *m = load("catdog");
  ck_assert_int_eq(m->nclasses, 2);
  ck_assert_str_eq(m->classes[0], "cat");
  ck_assert_str_eq(m->classes[1], "dog");
  ck_assert_str_eq(m->data.format, "folder");
  ck_assert_double_eq(m->data.val_split, 0.2);
  Graph *g = m->graph;
  assert_type(g, "label", "f32[32,1]");
  assert_type(g, "fc1.weight", "f32[120,400]");
  assert_type(g, "fc3", "f32[32,1]");
  ck_assert_int_eq(g->ret[0]->op, OP_bce);
  ck_assert_int_eq(count_op(g, OP_sigmoid), 1);
  ck_assert_str_eq(graph_str(g, "optimizer", ""), "adam");
  ck_assert_double_eq(graph_float(g, "lr", 0), 0.0001);
  ck_assert_double_eq(graph_float(g, "beta2", 0), 0.999);
  ck_assert_double_eq(graph_float(g, "eps", 0), 1e-8);
}
END_TEST

START_TEST(mnist_fields) {
  Model *m = load("mnist");
  ck_assert_int_eq(m->channels, 1);
  ck_assert_int_eq(m->height, 28);
  ck_assert_int_eq(m->width, 28);
  ck_assert_int_eq(m->nclasses, 10);
  ck_assert_str_eq(m->classes[3], "3");
  ck_assert_str_eq(m->data.format, "idx");
  ck_assert_str_eq(m->data.train, "/usr/share/datasets/fashion-mnist");
  Graph *g = m->graph;
  char *image = xformat("f32[%d,1,28,28]", m->batch_size);
  assert_type(g, "image", image);
  assert_type(g, "conv1.weight", "f32[6,1,5,5]");
  assert_type(g, "fc1.weight", "f32[120,400]");
  assert_type(g, "fc3.weight", "f32[10,84]");
}
END_TEST

// The temporary model file; removed at exit too, since errors exit.
static char tmp_path[64];

static void remove_tmp(void) { unlink(tmp_path); }

// Writes `text` to a temporary model file and loads it.
static Model *load_text(const char *text) {
  static bool registered;
  if (!registered)
    atexit(remove_tmp), registered = true;
  strcpy(tmp_path, "/tmp/xentcc-test-XXXXXX.yaml");
  int fd = mkstemps(tmp_path, 5);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  Model *m = load_model(xstrdup(tmp_path));
  remove_tmp();
  return m;
}

static const char *small_model = "input: {channels: 1, height: 8, width: 8}\n"
                                 "layers:\n"
                                 "  - flatten\n"
                                 "  - {name: fc, linear: {out_features: 4}}\n"
                                 "loss: cross_entropy\n"
                                 "optimizer: {sgd: {lr: 0.1}}\n"
                                 "data: {format: idx, train: rel/dir}\n";

START_TEST(defaults) {
  Model *m = load_text(small_model);
  // The name comes from the file name, made a valid IR name.
  ck_assert(strncmp(m->name, "xentcc_test_", 12) == 0);
  ck_assert_int_eq(m->epochs, 10);
  ck_assert_int_eq(m->batch_size, 32);
  ck_assert(m->shuffle);
  ck_assert_int_eq(m->log_every, 100);
  ck_assert_double_eq(m->data.mean[0], 0.0);
  ck_assert_double_eq(m->data.std[0], 1.0);
  ck_assert_ptr_null(m->data.test);
  ck_assert_str_eq(m->data.train, "/tmp/rel/dir");
  // Without `classes`, cross-entropy classes are named by index.
  ck_assert_int_eq(m->nclasses, 4);
  ck_assert_str_eq(m->classes[2], "2");
  ck_assert_double_eq(graph_float(m->graph, "dampening", -1), 0.0);
  ck_assert_int_eq(graph_int(m->graph, "nesterov", -1), 0);
}
END_TEST

START_TEST(data_options) {
  Model *m =
      load_text("input: {channels: 3, height: 16, width: 16}\n"
                "classes: [cat, dog]\n"
                "layers: [flatten, {name: fc, linear: {out_features: 1}}]\n"
                "loss: {bce_with_logits: {pos_weight: 2.5}}\n"
                "optimizer: adam\n"
                "train: {epochs: 3, batch_size: 8, shuffle: false, seed: 7, drop_last: true,\n"
                "        log_every: 5}\n"
                "data:\n"
                "  format: imagefolder\n"
                "  train: /abs/train\n"
                "  test: ../test\n"
                "  val_split: 0.25\n"
                "  normalize: {mean: [0.1, 0.2, 0.3], std: [0.4, 0.5, 0.6]}\n"
                "  augment: {random_crop: {padding: 4}, random_horizontal_flip: true}\n"
                "  test_augment: {horizontal_flip: true}\n");
  ck_assert_int_eq(m->epochs, 3);
  ck_assert_int_eq(m->batch_size, 8);
  ck_assert(!m->shuffle);
  ck_assert_int_eq(m->seed, 7);
  ck_assert(m->drop_last);
  ck_assert_int_eq(m->log_every, 5);
  ck_assert_str_eq(m->data.format, "imagefolder");
  ck_assert_str_eq(m->data.train, "/abs/train");
  ck_assert_str_eq(m->data.test, "/tmp/../test");
  ck_assert_double_eq(m->data.val_split, 0.25);
  ck_assert_double_eq(m->data.mean[2], 0.3);
  ck_assert_double_eq(m->data.std[1], 0.5);
  ck_assert_int_eq(m->data.random_crop_padding, 4);
  ck_assert(m->data.random_flip);
  ck_assert(m->data.test_flip);
  Graph *g = m->graph;
  assert_type(g, "label", "f32[8,1]");
  ck_assert_double_eq(node_attr(g->ret[0], "pos_weight")->floats[0], 2.5);
  // Adam with no options takes PyTorch's defaults.
  ck_assert_double_eq(graph_float(g, "lr", 0), 0.001);
  ck_assert_double_eq(graph_float(g, "beta1", 0), 0.9);
  ck_assert_double_eq(graph_float(g, "weight_decay", -1), 0.0);
}
END_TEST

static char *used_options(void) {
  char *text;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  print_used_options(f);
  fclose(f);
  return text;
}

// The options the models read so far used (xentcc MODEL.yaml --list-options)
// accumulate; forget_used_options starts the list again without freeing it,
// for the YAML fuzzer, whose driver frees each input's blocks (the second
// model it read used the freed list).
START_TEST(used_options_restart) {
  load_text(small_model);
  char *first = used_options();
  ck_assert_msg(strstr(first, "\ndata.format=idx\n"), "%s", first);
  forget_used_options();
  ck_assert_str_eq(used_options(), "");
  load_text(small_model);
  ck_assert_str_eq(used_options(), first);
}
END_TEST

// Errors end the process with status 1 (Check forks each test).
START_TEST(bad_shape_exits_1) {
  load_text("input: {channels: 1, height: 8, width: 8}\n"
            "layers:\n"
            "  - flatten\n"
            "  - {name: fc, linear: {in_features: 60, out_features: 4}}\n"
            "loss: cross_entropy\n"
            "optimizer: {sgd: {lr: 0.1}}\n"
            "data: {format: idx}\n");
}
END_TEST

START_TEST(syntax_error_exits_1) { load_text("input: {channels: 1\nlayers: [\n"); }
END_TEST

START_TEST(not_a_mapping_exits_1) { load_text("- just\n- a list\n"); }
END_TEST

int main(void) {
  Suite *s = suite_create("frontend");
  TCase *tc = tcase_create("models");
  tcase_add_test(tc, cifar10_fields);
  tcase_add_test(tc, cifar10_graph);
  tcase_add_test(tc, catdog_fields);
  tcase_add_test(tc, mnist_fields);
  tcase_add_test(tc, defaults);
  tcase_add_test(tc, data_options);
  tcase_add_test(tc, used_options_restart);
  tcase_add_exit_test(tc, bad_shape_exits_1, 1);
  tcase_add_exit_test(tc, syntax_error_exits_1, 1);
  tcase_add_exit_test(tc, not_a_mapping_exits_1, 1);
  suite_add_tcase(s, tc);
  return run_suite(s);
}
