// op_rules: the rules of every op of ops.def, by OpKind. Each op's rules are
// defined beside one another in its family's file (conv.c, loss.c, ...); a
// line of ops.def without its rules_ID fails to link.
#include "ops.h"

const OpRules *op_rules(OpKind op) {
  static const OpRules *const table[OP_COUNT] = {
#define OP(id, min, max, flags, schema) [OP_##id] = &rules_##id,
#include "ops.def"
#undef OP
  };
  if ((unsigned)op >= OP_COUNT)
    unreachable();
  return table[op];
}
