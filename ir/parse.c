// The parser of the textual graph IR: reads exactly what print.c writes (the
// format is described in docs/ir.md) back into a Graph, so that
// print(parse(print(g))) == print(g). It is line-oriented like the printer, and
// every error points at file:line:col with a caret and says what was expected.
#include "ir.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

// A value name as written, without '%'. Unnamed nodes print as %0, %1, ...;
// their numbers live only here, so a reference to %3 finds the node that was
// written as %3 while the node itself stays unnamed.
typedef struct {
  char *key;
  Node *node;
} Symbol;

typedef struct {
  const char *path;
  const char *p;          // next character
  int line;               // of p, 1-based
  const char *line_start; // first character of p's line
  Graph *g;
  Symbol *sym;            // hash table of every name defined so far
  int nsym, symcap;       // symcap is a power of two
} Parser;

static Loc here(Parser *ps) {
  return (Loc){ps->path, ps->line, (int)(ps->p - ps->line_start) + 1};
}

static bool is_name_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == '.'; }
static bool is_ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

// '\r' counts as a space so files with CRLF line ends read the same.
static void skip_space(Parser *ps) {
  while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r')
    ps->p++;
}

static bool at_eol(Parser *ps) {
  skip_space(ps);
  return !*ps->p || *ps->p == '\n' || (ps->p[0] == '/' && ps->p[1] == '/');
}

// What the parser is looking at, for "expected X, got Y".
static const char *describe(Parser *ps) {
  const char *p = ps->p;
  if (!*p)
    return "end of file";
  if (*p == '\n' || (p[0] == '/' && p[1] == '/'))
    return "end of line";
  if ((unsigned char)*p < 32 || (unsigned char)*p >= 127)
    return xformat("byte 0x%02x", (unsigned char)*p);
  // The word or %name that starts here, else the one character.
  int n = *p == '%' || *p == '-';
  while (n < 32 && is_name_char(p[n]))
    n++;
  return xformat("'%.*s'", n ? n : 1, p);
}

static noreturn void expected(Parser *ps, const char *what, const char *hint) {
  error_at(here(ps), hint, "expected %s, got %s", what, describe(ps));
}

static void next_line(Parser *ps) {
  ps->p++;
  ps->line++;
  ps->line_start = ps->p;
}

// Ends a statement: optional spaces and a comment, then a newline (or the end).
static void end_line(Parser *ps) {
  if (!at_eol(ps))
    expected(ps, "end of line", NULL);
  while (*ps->p && *ps->p != '\n')
    ps->p++;
  if (*ps->p == '\n')
    next_line(ps);
}

static void skip_blank_lines(Parser *ps) {
  while (*ps->p && at_eol(ps))
    end_line(ps);
}

static bool consume(Parser *ps, char c) {
  skip_space(ps);
  if (*ps->p != c)
    return false;
  ps->p++;
  return true;
}

static void expect(Parser *ps, char c, const char *hint) {
  if (!consume(ps, c))
    expected(ps, xformat("'%c'", c), hint);
}

// A keyword, op or attribute name: [A-Za-z_][A-Za-z0-9_]*. NULL if none here.
static char *ident(Parser *ps) {
  skip_space(ps);
  const char *s = ps->p;
  if (!isalpha((unsigned char)*s) && *s != '_')
    return NULL;
  while (is_ident_char(*ps->p))
    ps->p++;
  return xstrndup(s, ps->p - s);
}

// A value or graph name: [A-Za-z0-9_.]+, the characters print.c writes.
static char *name(Parser *ps, const char *what) {
  skip_space(ps);
  const char *s = ps->p;
  while (is_name_char(*ps->p))
    ps->p++;
  if (ps->p == s)
    expected(ps, what, "names use letters, digits, '_' and '.'");
  return xstrndup(s, ps->p - s);
}

static bool all_digits(const char *s) {
  for (; *s; s++)
    if (!isdigit((unsigned char)*s))
      return false;
  return true;
}

// The symbol table is an open-addressing hash table, so that big graphs
// parse in linear time.
static uint64_t hash(const char *s) {
  uint64_t h = 0xcbf29ce484222325u; // FNV-1a
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3u;
  return h;
}

static Symbol *slot(Parser *ps, const char *key) {
  uint64_t mask = ps->symcap - 1;
  for (uint64_t i = hash(key) & mask;; i = (i + 1) & mask)
    if (!ps->sym[i].key || strcmp(ps->sym[i].key, key) == 0)
      return &ps->sym[i];
}

static Node *lookup(Parser *ps, const char *key) { return slot(ps, key)->node; }

static void define(Parser *ps, char *key, Node *n) {
  if (2 * (ps->nsym + 1) > ps->symcap) {
    Symbol *old = ps->sym;
    int oldcap = ps->symcap;
    ps->symcap *= 2;
    ps->sym = xcalloc(ps->symcap, sizeof *ps->sym);
    for (int i = 0; i < oldcap; i++)
      if (old[i].key)
        *slot(ps, old[i].key) = old[i];
    free(old);
  }
  *slot(ps, key) = (Symbol){key, n};
  ps->nsym++;
}

// %name of an operand or return value, which must be defined on an earlier line.
static Node *use(Parser *ps) {
  skip_space(ps);
  Loc loc = here(ps);
  if (*ps->p != '%')
    expected(ps, "a value like %x", NULL);
  ps->p++;
  char *key = name(ps, "a value name after '%'");
  Node *n = lookup(ps, key);
  if (!n)
    error_at(loc, "operands must be defined on an earlier line", "use of undefined value %%%s",
             key);
  return n;
}

// --- Attribute values ----------------------------------------------------------

static const char *kind_name(char kind) {
  switch (kind) {
  case 'i': return "an integer";
  case 'f': return "a float";
  case 's': return "a string";
  case 'I': return "a list of integers";
  case 'F': return "a list of floats";
  }
  unreachable();
}

// An integer, or a float: a number with '.', an exponent, inf or nan.
static Attr number(Parser *ps, const char *what) {
  skip_space(ps);
  Loc loc = here(ps);
  const char *s = ps->p, *q = s;
  if (*q == '-' || *q == '+')
    q++;
  bool is_float = false;
  if (!strncmp(q, "inf", 3) || !strncmp(q, "nan", 3)) {
    q += 3;
    is_float = true;
  } else {
    if (!isdigit((unsigned char)*q))
      expected(ps, what, NULL);
    while (isdigit((unsigned char)*q))
      q++;
    if (*q == '.') {
      is_float = true;
      for (q++; isdigit((unsigned char)*q);)
        q++;
    }
    if (*q == 'e' || *q == 'E') {
      const char *e = q + 1;
      if (*e == '+' || *e == '-')
        e++;
      if (isdigit((unsigned char)*e)) {
        is_float = true;
        for (q = e; isdigit((unsigned char)*q);)
          q++;
      }
    }
  }
  if (is_name_char(*q)) {
    while (is_name_char(*q) || *q == '-' || *q == '+')
      q++;
    error_at(loc, "write integers like 3 and floats like 0.5, 1e-08, inf or nan",
             "malformed number '%.*s'", (int)(q - s), s);
  }
  char *text = xstrndup(s, q - s);
  ps->p = q;
  if (is_float)
    return attr_float(strtod(text, NULL)); // out-of-range values become inf or 0, as printed
  errno = 0;
  long long v = strtoll(text, NULL, 10);
  if (errno == ERANGE)
    error_at(loc, NULL, "integer %s does not fit in 64 bits", text);
  return attr_int(v);
}

// A double-quoted string on one line. '\' escapes the next character, as
// print.c writes '"' and '\'; "\n" and "\t" also read as newline and tab.
static char *string(Parser *ps, const char *what) {
  skip_space(ps);
  Loc start = here(ps);
  if (*ps->p != '"')
    expected(ps, what, NULL);
  ps->p++;
  size_t len = 0, cap = 16;
  char *buf = xcalloc(1, cap);
  for (;;) {
    char c = *ps->p;
    if (c == '"') {
      ps->p++;
      break;
    }
    if (c == '\\' && ps->p[1] && ps->p[1] != '\n') {
      c = *++ps->p;
      c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else if (!c || c == '\n') {
      error_at(start, "close the string with '\"' on the same line", "unterminated string");
    }
    ps->p++;
    if (len + 1 == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      if (!buf)
        fatal("out of memory");
    }
    buf[len++] = c;
  }
  buf[len] = '\0';
  return buf;
}

// [1, 2] is a list of integers, [1.0, 2] a list of floats; [] counts as integers.
static Attr list(Parser *ps) {
  expect(ps, '[', NULL);
  int n = 0, cap = 4;
  Attr *elem = xcalloc(cap, sizeof *elem);
  bool any_float = false;
  if (!consume(ps, ']')) {
    do {
      if (n == cap) {
        cap *= 2;
        elem = realloc(elem, sizeof *elem * cap);
        if (!elem)
          fatal("out of memory");
      }
      elem[n] = number(ps, "a number");
      any_float |= elem[n].kind == 'f';
      n++;
    } while (consume(ps, ','));
    expect(ps, ']', "separate list elements with ','");
  }
  Attr a = {.kind = any_float ? 'F' : 'I', .n = n};
  if (any_float)
    a.floats = xcalloc(n, sizeof *a.floats);
  else
    a.ints = xcalloc(n, sizeof *a.ints);
  for (int i = 0; i < n; i++) {
    if (!any_float)
      a.ints[i] = elem[i].i;
    else
      a.floats[i] = elem[i].kind == 'f' ? elem[i].f : (double)elem[i].i;
  }
  free(elem);
  return a;
}

// Any value; its kind comes from its syntax.
static Attr value(Parser *ps) {
  skip_space(ps);
  if (*ps->p == '"')
    return attr_str(string(ps, "a string"));
  if (*ps->p == '[')
    return list(ps);
  return number(ps, "a value: a number, a \"string\" or a [list]");
}

// Converts a parsed value to the kind the op's schema wants: an integer is
// also a float (factor = 1), and a list of integers a list of floats.
static Attr coerce(Attr a, char want, Loc loc, const char *op, const char *attr) {
  if (a.kind == want)
    return a;
  if (want == 'f' && a.kind == 'i')
    return attr_float((double)a.i);
  if (want == 'F' && a.kind == 'I') {
    Attr f = {.kind = 'F', .n = a.n, .floats = xcalloc(a.n, sizeof(double))};
    for (int i = 0; i < a.n; i++)
      f.floats[i] = (double)a.ints[i];
    return f;
  }
  error_at(loc, NULL, "attribute '%s' of %s must be %s, got %s", attr, op, kind_name(want),
           kind_name(a.kind));
}

// --- Statements ----------------------------------------------------------------

static const char *attr_list(const OpInfo *info) {
  if (!info->nattrs)
    return xformat("%s has no attributes", info->name);
  char *s = xformat("the attributes of %s are", info->name);
  for (int i = 0; i < info->nattrs; i++)
    s = xformat("%s%s %s", s, i ? "," : "", info->attr_name[i]);
  return s;
}

// {name = value, ...}: every attribute of the op's schema, each once.
static void node_attrs(Parser *ps, Node *n, Loc op_loc) {
  const OpInfo *info = op_info(n->op);
  if (consume(ps, '{') && !consume(ps, '}')) {
    do {
      skip_space(ps);
      Loc loc = here(ps);
      char *key = ident(ps);
      if (!key)
        expected(ps, "an attribute name", attr_list(info));
      int i = op_attr_index(n->op, key);
      if (i < 0)
        error_at(loc, attr_list(info), "%s has no attribute '%s'", info->name, key);
      if (n->attr[i].kind)
        error_at(loc, "give each attribute once", "duplicate attribute '%s'", key);
      expect(ps, '=', NULL);
      skip_space(ps);
      Loc vloc = here(ps);
      n->attr[i] = coerce(value(ps), info->attr_kind[i], vloc, info->name, key);
    } while (consume(ps, ','));
    expect(ps, '}', "separate attributes with ','");
  }
  for (int i = 0; i < info->nattrs; i++)
    if (!n->attr[i].kind)
      error_at(op_loc, xformat("every attribute is written out; %s", attr_list(info)),
               "%s needs attribute '%s'", info->name, info->attr_name[i]);
}

// f32[32,3,32,32] or i32[] (a scalar).
static Type type(Parser *ps) {
  skip_space(ps);
  Loc loc = here(ps);
  char *dt = ident(ps);
  Type t = {0};
  if (dt && !strcmp(dt, "f32"))
    t.dtype = DT_F32;
  else if (dt && !strcmp(dt, "i32"))
    t.dtype = DT_I32;
  else if (dt && !strcmp(dt, "bf16"))
    t.dtype = DT_BF16;
  else if (dt && !strcmp(dt, "f16"))
    t.dtype = DT_F16;
  else {
    ps->p = ps->line_start + loc.col - 1;
    expected(ps, "a type like f32[32,10] or i32[]", "the element types are f32, i32, bf16 and f16");
  }
  expect(ps, '[', "a type lists its dimensions in brackets, like f32[32,10]; a scalar is f32[]");
  if (consume(ps, ']'))
    return t;
  do {
    skip_space(ps);
    Loc dloc = here(ps);
    Attr d = number(ps, "a dimension");
    if (d.kind != 'i' || d.i < 0)
      error_at(dloc, NULL, "a dimension must be a non-negative integer");
    if (t.rank == MAX_RANK)
      error_at(dloc, NULL, "tensors have at most %d dimensions", MAX_RANK);
    t.dim[t.rank++] = d.i;
  } while (consume(ps, ','));
  expect(ps, ']', "separate dimensions with ','");
  return t;
}

// A non-negative int for loc("file":line:col).
static int loc_number(Parser *ps) {
  skip_space(ps);
  Loc loc = here(ps);
  Attr a = number(ps, "a line or column number");
  if (a.kind != 'i' || a.i < 0 || a.i > INT_MAX)
    error_at(loc, NULL, "a line or column number must be a non-negative integer");
  return (int)a.i;
}

// loc("models/cifar10.yaml":7:5)
static Loc source_loc(Parser *ps) {
  skip_space(ps);
  char *kw = ident(ps);
  if (!kw || strcmp(kw, "loc")) {
    if (kw)
      ps->p -= strlen(kw);
    expected(ps, "loc(\"file\":line:col) or end of line", NULL);
  }
  expect(ps, '(', NULL);
  Loc loc = {.file = string(ps, "a file name in quotes")};
  expect(ps, ':', NULL);
  loc.line = loc_number(ps);
  expect(ps, ':', NULL);
  loc.col = loc_number(ps);
  expect(ps, ')', NULL);
  return loc;
}

// %name = op(%a, %b) {k = v, ...} : type loc("file":line:col)
static void node_line(Parser *ps) {
  skip_space(ps);
  Loc name_loc = here(ps);
  ps->p++; // '%'
  char *key = name(ps, "a value name after '%'");
  if (lookup(ps, key))
    error_at(name_loc, "each value is defined once; rename one of them",
             "redefinition of %%%s", key);
  expect(ps, '=', NULL);

  skip_space(ps);
  Loc op_loc = here(ps);
  char *opname = ident(ps);
  if (!opname)
    expected(ps, "an op name", "the ops are listed in ir/ops.def");
  int op = op_lookup(opname);
  if (op < 0)
    error_at(op_loc, "the ops are listed in ir/ops.def", "unknown op '%s'", opname);

  int nin = 0, cap = 4;
  Node **in = xcalloc(cap, sizeof *in);
  if (consume(ps, '(') && !consume(ps, ')')) {
    do {
      if (nin == cap) {
        cap *= 2;
        in = realloc(in, sizeof *in * cap);
        if (!in)
          fatal("out of memory");
      }
      in[nin++] = use(ps);
    } while (consume(ps, ','));
    expect(ps, ')', "separate operands with ','");
  }
  Node *n = node_new(ps->g, op, in, nin, (Loc){0});
  free(in);
  n->name = all_digits(key) ? NULL : key;
  node_attrs(ps, n, op_loc);

  expect(ps, ':', "every node declares its type, like ': f32[32,10]'");
  n->type = type(ps);
  if (!at_eol(ps))
    n->loc = source_loc(ps);
  end_line(ps);
  define(ps, key, n);
}

// attr NAME = VALUE
static void attr_line(Parser *ps) {
  skip_space(ps);
  Loc loc = here(ps);
  char *key = ident(ps);
  if (!key)
    expected(ps, "a graph attribute name", NULL);
  if (graph_attr(ps->g, key))
    error_at(loc, "give each graph attribute once", "duplicate graph attribute '%s'", key);
  expect(ps, '=', NULL);
  graph_set_attr(ps->g, key, value(ps));
  end_line(ps);
}

// return %a, %b
static void return_line(Parser *ps) {
  do
    graph_return(ps->g, use(ps));
  while (consume(ps, ','));
  end_line(ps);
}

// graph NAME { attr lines, node lines, return line }: in the order print.c
// writes them.
Graph *parse_graph(const char *path, const char *text) {
  path = xstrdup(path);
  src_register(path, text);
  Parser ps = {.path = path, .p = text, .line = 1, .line_start = text, .symcap = 64};
  ps.sym = xcalloc(ps.symcap, sizeof *ps.sym);
  skip_blank_lines(&ps);

  skip_space(&ps);
  const char *kw_start = ps.p;
  char *kw = ident(&ps);
  if (!kw || strcmp(kw, "graph")) {
    ps.p = kw_start;
    expected(&ps, "'graph NAME {'", "an IR file holds one graph: graph NAME { ... }");
  }
  ps.g = graph_new(name(&ps, "a graph name"));
  expect(&ps, '{', NULL);
  end_line(&ps);

  enum { ATTRS, NODES, RETURNED } part = ATTRS;
  for (;;) {
    skip_blank_lines(&ps);
    skip_space(&ps);
    Loc loc = here(&ps);
    if (!*ps.p)
      error_at(loc, "close the graph with '}'", "unexpected end of file in graph %s",
               ps.g->name);
    if (consume(&ps, '}')) {
      end_line(&ps);
      break;
    }
    if (*ps.p == '%') {
      if (part == RETURNED)
        error_at(loc, "move the return line to the end of the graph",
                 "node after the return line");
      node_line(&ps);
      part = NODES;
      continue;
    }
    char *kw = ident(&ps);
    if (kw && !strcmp(kw, "attr")) {
      if (part != ATTRS)
        error_at(loc, "graph attributes come first, before the nodes",
                 "graph attribute after a node");
      attr_line(&ps);
    } else if (kw && !strcmp(kw, "return")) {
      if (part == RETURNED)
        error_at(loc, "list every returned value on one line: return %a, %b",
                 "second return line");
      return_line(&ps);
      part = RETURNED;
    } else {
      ps.p = ps.line_start + loc.col - 1;
      expected(&ps, "'%name = op...', 'attr', 'return' or '}'", NULL);
    }
  }
  skip_blank_lines(&ps);
  if (*ps.p)
    error_at(here(&ps), "an IR file holds one graph", "text after the end of graph %s",
             ps.g->name);
  for (int i = 0; i < ps.symcap; i++)
    if (ps.sym[i].key && !ps.sym[i].node->name)
      free(ps.sym[i].key);
  free(ps.sym);
  return ps.g;
}
