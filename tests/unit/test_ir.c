// Unit tests of the graph IR library: types, the op table, builders with
// PyTorch's shape formulas, toposort and use replacement, the text format
// (print -> parse -> print is exact, floats read back bit for bit), graph
// attributes, and the verifier's messages for graphs only a pass can build.
#include "../common/capture.h"
#include "ir.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const Loc no_loc = {0};

static char *print_to_string(Graph *g) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  print_graph(f, g);
  fclose(f);
  return buf;
}

static void verify_fn(void *g) { verify_graph(g); }

static void assert_verify_dies(Graph *g, const char *want) {
  int status;
  char *err = run_capturing_stderr(verify_fn, g, &status);
  ck_assert_int_eq(status, 1);
  ck_assert_msg(strstr(err, want), "expected '%s' in:\n%s", want, err);
}

static Node *input(Graph *g, const char *name, DType dt, int rank, const int64_t *dim) {
  Node *n = node_new(g, OP_input, NULL, 0, no_loc);
  n->name = xstrdup(name);
  n->type = type_make(dt, rank, dim);
  return n;
}

static Node *param(Graph *g, const char *name, int rank, const int64_t *dim) {
  Node *n = node_new(g, OP_param, NULL, 0, no_loc);
  n->name = xstrdup(name);
  n->type = type_make(DT_F32, rank, dim);
  node_set_str(n, "init", "zeros");
  node_set_int(n, "fan_in", 0);
  return n;
}

static Node *unary(Graph *g, OpKind op, Node *x) {
  Node *n = node_new(g, op, &x, 1, no_loc);
  node_infer(n);
  return n;
}

static Node *conv(Graph *g, Node *x, Node *w, int64_t stride, int64_t pad) {
  Node *n = node_new(g, OP_conv2d, (Node *[]){x, w}, 2, no_loc);
  node_set_ints(n, "stride", (int64_t[]){stride, stride}, 2);
  node_set_ints(n, "padding", (int64_t[]){pad, pad}, 2);
  node_infer(n);
  return n;
}

static Node *pool(Graph *g, OpKind op, Node *x, int64_t k, int64_t s, int64_t p) {
  Node *n = node_new(g, op, &x, 1, no_loc);
  node_set_ints(n, "kernel", (int64_t[]){k, k}, 2);
  node_set_ints(n, "stride", (int64_t[]){s, s}, 2);
  node_set_ints(n, "padding", (int64_t[]){p, p}, 2);
  node_infer(n);
  return n;
}

// --- Types -------------------------------------------------------------------

START_TEST(types) {
  Type img = type_make(DT_F32, 4, (int64_t[]){32, 3, 32, 32});
  Type scalar = type_make(DT_I32, 0, NULL);
  ck_assert_int_eq(type_numel(&img), 32 * 3 * 32 * 32);
  ck_assert_int_eq(type_numel(&scalar), 1);
  ck_assert_str_eq(type_str(&img), "f32[32,3,32,32]");
  ck_assert_str_eq(type_str(&scalar), "i32[]");

  Type same = type_make(DT_F32, 4, (int64_t[]){32, 3, 32, 32});
  Type other_dim = type_make(DT_F32, 4, (int64_t[]){32, 3, 32, 31});
  Type other_dtype = type_make(DT_I32, 4, (int64_t[]){32, 3, 32, 32});
  Type other_rank = type_make(DT_F32, 3, (int64_t[]){32, 3, 32});
  ck_assert(type_eq(&img, &same));
  ck_assert(!type_eq(&img, &other_dim));
  ck_assert(!type_eq(&img, &other_dtype));
  ck_assert(!type_eq(&img, &other_rank));
}
END_TEST

// --- The op table ----------------------------------------------------------------

START_TEST(op_table) {
  ck_assert_int_eq(op_lookup("conv2d"), OP_conv2d);
  ck_assert_int_eq(op_lookup("assign"), OP_assign);
  ck_assert_int_eq(op_lookup("gelu"), OP_gelu);
  ck_assert_int_eq(op_lookup("swish"), -1);
  ck_assert_int_eq(op_lookup(""), -1);
  for (int op = 0; op < OP_COUNT; op++)
    ck_assert_int_eq(op_lookup(op_info(op)->name), op);

  const OpInfo *c = op_info(OP_conv2d);
  ck_assert_str_eq(c->name, "conv2d");
  ck_assert_int_eq(c->min_in, 2);
  ck_assert_int_eq(c->max_in, 3);
  ck_assert_int_eq(c->nattrs, 2);
  ck_assert_str_eq(c->attr_name[0], "stride");
  ck_assert_str_eq(c->attr_name[1], "padding");
  ck_assert_int_eq(c->attr_kind[0], 'I');
  ck_assert_int_eq(op_attr_index(OP_conv2d, "padding"), 1);
  ck_assert_int_eq(op_attr_index(OP_conv2d, "dilation"), -1);

  const OpInfo *p = op_info(OP_param);
  ck_assert(p->flags & OPF_SOURCE);
  ck_assert_int_eq(p->nattrs, 2);
  ck_assert_int_eq(p->attr_kind[op_attr_index(OP_param, "init")], 's');
  ck_assert_int_eq(p->attr_kind[op_attr_index(OP_param, "fan_in")], 'i');
  ck_assert_int_eq(op_info(OP_relu)->nattrs, 0);
  ck_assert(op_info(OP_relu)->flags & OPF_ELEMENTWISE);
  ck_assert(op_info(OP_assign)->flags & OPF_SIDE_EFFECT);
  ck_assert_int_eq(op_info(OP_adam_update)->nattrs, 5);
}
END_TEST

// --- Builders and shape rules: PyTorch's formulas ---------------------------------

// floor((in + 2*pad - k) / stride) + 1, as nn.Conv2d and nn.MaxPool2d compute it.
START_TEST(conv_and_pool_shapes) {
  Graph *g = graph_new("shapes");
  Node *x = input(g, "image", DT_F32, 4, (int64_t[]){32, 3, 32, 32});
  Node *w = param(g, "conv1.weight", 4, (int64_t[]){6, 3, 5, 5});
  Node *c = conv(g, x, w, 1, 0);
  ck_assert_str_eq(type_str(&c->type), "f32[32,6,28,28]");
  Node *p = pool(g, OP_maxpool2d, c, 2, 2, 0);
  ck_assert_str_eq(type_str(&p->type), "f32[32,6,14,14]");

  // Strided, padded 3x3: 32 -> floor((32 + 2 - 3) / 2) + 1 = 16.
  Node *w3 = param(g, "conv2.weight", 4, (int64_t[]){8, 3, 3, 3});
  ck_assert_str_eq(type_str(&conv(g, x, w3, 2, 1)->type), "f32[32,8,16,16]");
  // Floor mode: 14 with kernel 3, stride 2 -> floor(11 / 2) + 1 = 6.
  ck_assert_str_eq(type_str(&pool(g, OP_avgpool2d, p, 3, 2, 0)->type), "f32[32,6,6,6]");
  ck_assert_str_eq(type_str(&pool(g, OP_maxpool2d, p, 3, 2, 1)->type), "f32[32,6,7,7]");

  Node *flat = node_new(g, OP_reshape, &p, 1, no_loc);
  flat->type = type_make(DT_F32, 2, (int64_t[]){32, 6 * 14 * 14});
  node_infer(flat);
  Node *fw = param(g, "fc1.weight", 2, (int64_t[]){120, 6 * 14 * 14});
  Node *fb = param(g, "fc1.bias", 1, (int64_t[]){120});
  Node *fc = node_new(g, OP_linear, (Node *[]){flat, fw, fb}, 3, no_loc);
  node_infer(fc);
  ck_assert_str_eq(type_str(&fc->type), "f32[32,120]");
  ck_assert_str_eq(type_str(&unary(g, OP_relu, fc)->type), "f32[32,120]");
  ck_assert_str_eq(type_str(&unary(g, OP_l2norm, fc)->type), "f32[]");
  verify_graph(g);
}
END_TEST

static void infer_bad_conv(void *unused) {
  Graph *g = graph_new("bad");
  Node *x = input(g, "image", DT_F32, 4, (int64_t[]){1, 1, 28, 28});
  Node *w = param(g, "conv1.weight", 4, (int64_t[]){6, 3, 5, 5});
  conv(g, x, w, 1, 0);
}

START_TEST(infer_error_exits_1) {
  int status;
  char *err = run_capturing_stderr(infer_bad_conv, NULL, &status);
  ck_assert_int_eq(status, 1);
  ck_assert_msg(strstr(err, "weight expects 3 input channels but the input has 1"), "%s", err);
}
END_TEST

// --- Graph surgery -------------------------------------------------------------

// A sorted graph keeps its order exactly; a node that a pass appended late
// moves just in front of its first user.
START_TEST(toposort_stable) {
  Graph *g = graph_new("topo");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *a = unary(g, OP_relu, x);
  Node *b = unary(g, OP_sigmoid, a);
  Node *c = unary(g, OP_relu, b);
  graph_toposort(g);
  Node *want1[] = {x, a, b, c};
  for (int i = 0; i < 4; i++) {
    ck_assert_ptr_eq(g->node[i], want1[i]);
    ck_assert_int_eq(g->node[i]->id, i);
  }

  Node *late = unary(g, OP_sigmoid, x); // appended after c, but b will use it
  b->in[0] = late;
  graph_toposort(g);
  Node *want2[] = {x, a, late, b, c};
  for (int i = 0; i < 5; i++)
    ck_assert_ptr_eq(g->node[i], want2[i]);
  verify_graph(g);
}
END_TEST

START_TEST(replace_uses) {
  Graph *g = graph_new("rau");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *a = unary(g, OP_relu, x);
  Node *b = unary(g, OP_sigmoid, x);
  Node *s = node_new(g, OP_add, (Node *[]){a, a}, 2, no_loc);
  node_infer(s);
  graph_return(g, a);
  graph_return(g, s);
  ck_assert_int_eq(count_uses(g, a), 3);
  ck_assert_int_eq(count_uses(g, b), 0);

  replace_all_uses(g, a, b);
  ck_assert_ptr_eq(s->in[0], b);
  ck_assert_ptr_eq(s->in[1], b);
  ck_assert_ptr_eq(g->ret[0], b);
  ck_assert_ptr_eq(g->ret[1], s);
  ck_assert_int_eq(count_uses(g, a), 0);
  ck_assert_int_eq(count_uses(g, b), 3);
  ck_assert_ptr_eq(a->in[0], x); // the replaced node itself is untouched
}
END_TEST

// --- The text format ------------------------------------------------------------

static Graph *built_graph(void) {
  Graph *g = graph_new("built");
  graph_set_attr(g, "optimizer", attr_str("adam"));
  graph_set_attr(g, "lr", attr_float(0.001));
  graph_set_attr(g, "step_size", attr_int(30));
  graph_set_attr(g, "betas", attr_floats((double[]){0.9, 0.999}, 2));
  Node *x = input(g, "image", DT_F32, 4, (int64_t[]){2, 1, 6, 6});
  Node *label = input(g, "label", DT_I32, 1, (int64_t[]){2});
  Node *w = param(g, "conv.weight", 4, (int64_t[]){3, 1, 3, 3});
  w->loc = (Loc){"models/tiny.yaml", 4, 5};
  Node *c = conv(g, x, w, 1, 1);
  c->name = xstrdup("conv");
  c->loc = (Loc){"models/tiny.yaml", 4, 5};
  Node *r = unary(g, OP_relu, c);
  Node *p = pool(g, OP_maxpool2d, r, 2, 2, 0);
  Node *flat = node_new(g, OP_reshape, &p, 1, no_loc);
  flat->type = type_make(DT_F32, 2, (int64_t[]){2, 27});
  node_infer(flat);
  Node *fw = param(g, "fc.weight", 2, (int64_t[]){4, 27});
  Node *fc = node_new(g, OP_linear, (Node *[]){flat, fw}, 2, no_loc);
  node_infer(fc);
  Node *sc = node_new(g, OP_scale, &fc, 1, no_loc);
  node_set_float(sc, "factor", 0.1);
  node_infer(sc);
  Node *cw = node_new(g, OP_const, NULL, 0, no_loc);
  cw->type = type_make(DT_F32, 1, (int64_t[]){4});
  node_set_floats(cw, "value", (double[]){1.0, 0.5, 1e-8, -0.0}, 4);
  Node *loss = node_new(g, OP_softmax_cross_entropy, (Node *[]){sc, label, cw}, 3, no_loc);
  node_set_float(loss, "label_smoothing", 0.05);
  node_infer(loss);
  loss->name = xstrdup("loss");
  graph_return(g, loss);
  graph_return(g, fc);
  return g;
}

START_TEST(print_parse_roundtrip) {
  Graph *g = built_graph();
  verify_graph(g);
  char *text = print_to_string(g);
  Graph *h = parse_graph("built.xir", text);
  verify_graph(h);
  char *again = print_to_string(h);
  ck_assert_str_eq(again, text);

  // The parsed graph has the same structure, not just the same text.
  ck_assert_int_eq(h->nnodes, g->nnodes);
  ck_assert_int_eq(h->nret, 2);
  for (int i = 0; i < g->nnodes; i++) {
    ck_assert_int_eq(h->node[i]->op, g->node[i]->op);
    ck_assert(type_eq(&h->node[i]->type, &g->node[i]->type));
    ck_assert_int_eq(h->node[i]->nin, g->node[i]->nin);
    ck_assert_int_eq(!h->node[i]->name, !g->node[i]->name); // unnamed stays unnamed
  }
  Node *conv = graph_find(h, "conv");
  ck_assert_ptr_nonnull(conv);
  ck_assert_str_eq(conv->loc.file, "models/tiny.yaml");
  ck_assert_int_eq(conv->loc.line, 4);
  ck_assert_int_eq(conv->loc.col, 5);
  ck_assert_ptr_eq(conv->in[1], graph_find(h, "conv.weight"));
  ck_assert_ptr_eq(h->ret[0], graph_find(h, "loss"));
  ck_assert_double_eq(node_float(graph_find(h, "loss"), "label_smoothing"), 0.05);
  ck_assert_str_eq(graph_str(h, "optimizer", ""), "adam");
  ck_assert_int_eq(graph_int(h, "step_size", 0), 30);
  ck_assert_int_eq(graph_attr(h, "betas")->kind, 'F');
  ck_assert_double_eq(graph_attr(h, "betas")->floats[1], 0.999);
  ck_assert(strstr(text, "%0 = relu(%conv)"));
  ck_assert(strstr(text, "value = [1.0, 0.5, 1e-08, -0.0]"));
}
END_TEST

// Unnamed values keep their numbers only in the text: %7 and %3 read back as
// the first and second unnamed node and print as %0 and %1.
START_TEST(parse_numeric_names) {
  Graph *g = parse_graph("n.xir", "graph n {\n"
                                  "  %x = input : f32[4]\n"
                                  "  %7 = relu(%x) : f32[4]\n"
                                  "  %3 = sigmoid(%7) : f32[4] // a comment\n"
                                  "  return %3\n"
                                  "}\n");
  ck_assert_int_eq(g->nnodes, 3);
  ck_assert_ptr_null(g->node[1]->name);
  ck_assert_ptr_null(g->node[2]->name);
  ck_assert_ptr_eq(g->node[2]->in[0], g->node[1]);
  ck_assert_ptr_eq(g->ret[0], g->node[2]);
  ck_assert_str_eq(print_to_string(g), "graph n {\n"
                                       "  %x = input : f32[4]\n"
                                       "  %0 = relu(%x) : f32[4]\n"
                                       "  %1 = sigmoid(%0) : f32[4]\n"
                                       "  return %1\n"
                                       "}\n");
}
END_TEST

static void parse_fn(void *text) { parse_graph("bad.xir", text); }

START_TEST(parse_error_has_position) {
  int status;
  char *err = run_capturing_stderr(
      parse_fn, "graph g {\n  %x = input : f32[4]\n  %y = relu(%z) : f32[4]\n}\n", &status);
  ck_assert_int_eq(status, 1);
  ck_assert_str_eq(err, "bad.xir:3:13: error: use of undefined value %z\n"
                        "    %y = relu(%z) : f32[4]\n"
                        "              ^\n"
                        "hint: operands must be defined on an earlier line\n");
}
END_TEST

static void check_float(double v, const char *want) {
  char *s = format_float(v);
  if (want)
    ck_assert_str_eq(s, want);
  ck_assert_msg(strpbrk(s, ".e") || strstr(s, "inf") || strstr(s, "nan"), "%s reads as an int", s);
  double back = strtod(s, NULL);
  ck_assert_msg(memcmp(&back, &v, sizeof v) == 0, "%s does not read back as %.17g", s, v);
}

START_TEST(format_float_roundtrip) {
  check_float(0.1, "0.1");
  check_float(1e-8, "1e-08");
  check_float(1.0, "1.0");
  check_float(-2.0, "-2.0");
  check_float(3.4028234663852886e38, "3.4028234663852886e+38");
  check_float(-0.0, "-0.0");
  check_float(0.0, "0.0");
  check_float(1e21, "1e+21");
  check_float(0.1 + 0.2, "0.30000000000000004");
  check_float(1.0 / 3.0, NULL);
  check_float(5e-324, NULL);
  check_float(1.7976931348623157e308, NULL);
  check_float(INFINITY, "inf");
  check_float(-INFINITY, "-inf");
  ck_assert_str_eq(format_float(NAN), "nan");
  // And a spread of arbitrary bit patterns.
  uint64_t bits = 0x9E3779B97F4A7C15u;
  for (int i = 0; i < 2000; i++) {
    bits ^= bits << 13, bits ^= bits >> 7, bits ^= bits << 17;
    double v;
    memcpy(&v, &bits, sizeof v);
    if (!isnan(v))
      check_float(v, NULL);
  }
}
END_TEST

// Floats also survive a trip through the parser: it reads them with strtod.
START_TEST(float_attrs_parse_exactly) {
  double vals[] = {0.1, 1e-8, 1.0, 3.4028234663852886e38, -0.0, 1.0 / 3.0, 5e-324};
  Graph *g = graph_new("f");
  for (int i = 0; i < 7; i++)
    graph_set_attr(g, xformat("a%d", i), attr_float(vals[i]));
  Graph *h = parse_graph("f.xir", print_to_string(g));
  for (int i = 0; i < 7; i++) {
    const Attr *a = graph_attr(h, xformat("a%d", i));
    ck_assert_int_eq(a->kind, 'f');
    ck_assert(memcmp(&a->f, &vals[i], sizeof(double)) == 0);
  }
}
END_TEST

START_TEST(graph_attrs) {
  Graph *g = graph_new("attrs");
  graph_set_attr(g, "optimizer", attr_str("sgd"));
  graph_set_attr(g, "lr", attr_float(0.01));
  graph_set_attr(g, "nesterov", attr_int(0));
  graph_set_attr(g, "lr", attr_float(0.1)); // replaces in place, keeps the order
  ck_assert_int_eq(g->nattrs, 3);
  ck_assert_str_eq(g->attr[1].name, "lr");
  ck_assert_double_eq(graph_float(g, "lr", 0), 0.1);
  ck_assert_double_eq(graph_float(g, "nesterov", 5), 0.0); // an int reads as a float
  ck_assert_double_eq(graph_float(g, "momentum", 0.9), 0.9);
  ck_assert_int_eq(graph_int(g, "nesterov", 7), 0);
  ck_assert_int_eq(graph_int(g, "lr", 7), 7); // wrong kind: the default
  ck_assert_str_eq(graph_str(g, "optimizer", "adam"), "sgd");
  ck_assert_str_eq(graph_str(g, "schedule", "constant"), "constant");
  ck_assert_ptr_null(graph_attr(g, "missing"));
  ck_assert_str_eq(print_to_string(g), "graph attrs {\n"
                                       "  attr optimizer = \"sgd\"\n"
                                       "  attr lr = 0.1\n"
                                       "  attr nesterov = 0\n"
                                       "}\n");
}
END_TEST

// --- The verifier, on graphs the parser would refuse ------------------------------

START_TEST(verify_duplicate_names) {
  Graph *g = graph_new("dup");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *r = unary(g, OP_relu, x);
  r->name = xstrdup("x");
  r->loc = (Loc){"m.yaml", 3, 7};
  assert_verify_dies(g, "m.yaml:3:7: error: %x: name already defined by node 0");
}
END_TEST

START_TEST(verify_use_before_def) {
  Graph *g = graph_new("order");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *a = unary(g, OP_relu, x);
  Node *b = unary(g, OP_sigmoid, x);
  a->in[0] = b; // a pass rewired a without sorting
  assert_verify_dies(g, "in graph order: %0: operand 0 (%1) is used before it is defined");
}
END_TEST

START_TEST(verify_foreign_operand) {
  Graph *g = graph_new("mine"), *other = graph_new("other");
  Node *y = input(other, "y", DT_F32, 1, (int64_t[]){4});
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *a = unary(g, OP_relu, x);
  a->name = xstrdup("a");
  a->in[0] = y;
  assert_verify_dies(g, "in graph mine: %a: operand 0 is not a node of graph mine");
}
END_TEST

START_TEST(verify_unset_attr) {
  Graph *g = graph_new("attrs");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *s = node_new(g, OP_scale, &x, 1, no_loc);
  s->type = x->type; // factor never set
  assert_verify_dies(g, "in graph attrs: %0: scale: attribute 'factor' is unset, expected a float");
}
END_TEST

START_TEST(verify_bad_name) {
  Graph *g = graph_new("names");
  Node *x = input(g, "x", DT_F32, 1, (int64_t[]){4});
  Node *r = unary(g, OP_relu, x);
  r->name = xstrdup("12"); // would read back as an unnamed node
  assert_verify_dies(g, "%12: invalid name");
  r->name = xstrdup("fc-1");
  assert_verify_dies(g, "%fc-1: invalid name");
}
END_TEST

START_TEST(verify_foreign_return) {
  Graph *g = graph_new("ret"), *other = graph_new("other");
  input(g, "x", DT_F32, 1, (int64_t[]){4});
  graph_return(g, input(other, "y", DT_F32, 1, (int64_t[]){4}));
  assert_verify_dies(g, "in graph ret: return value 0 is not a node of the graph");
}
END_TEST

START_TEST(dot_output) {
  Graph *g = built_graph();
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  print_dot(f, g);
  fclose(f);
  ck_assert(strncmp(buf, "digraph \"built\" {\n", 18) == 0);
  ck_assert(strstr(buf, "    n0 [label=\"%image\\ninput\\nf32[2,1,6,6]\""));
  ck_assert(strstr(buf, "n2 -> n3 [constraint=false];")); // conv.weight -> conv, one column
  ck_assert(strstr(buf, "-> return"));
  ck_assert(buf[len - 2] == '}');
}
END_TEST

int main(void) {
  Suite *s = suite_create("ir");
  TCase *tc = tcase_create("ir");
  tcase_add_test(tc, types);
  tcase_add_test(tc, op_table);
  tcase_add_test(tc, conv_and_pool_shapes);
  tcase_add_test(tc, infer_error_exits_1);
  tcase_add_test(tc, toposort_stable);
  tcase_add_test(tc, replace_uses);
  tcase_add_test(tc, print_parse_roundtrip);
  tcase_add_test(tc, parse_numeric_names);
  tcase_add_test(tc, parse_error_has_position);
  tcase_add_test(tc, format_float_roundtrip);
  tcase_add_test(tc, float_attrs_parse_exactly);
  tcase_add_test(tc, graph_attrs);
  tcase_add_test(tc, verify_duplicate_names);
  tcase_add_test(tc, verify_use_before_def);
  tcase_add_test(tc, verify_foreign_operand);
  tcase_add_test(tc, verify_unset_attr);
  tcase_add_test(tc, verify_bad_name);
  tcase_add_test(tc, verify_foreign_return);
  tcase_add_test(tc, dot_output);
  suite_add_tcase(s, tc);
  return run_suite(s);
}
