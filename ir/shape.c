// infer_type: the shape rule of an op, after the checks every op shares
// (operand count, attribute kinds from ops.def). The rules themselves, with
// PyTorch's formulas, sit with each op's other rules in ir/ops/.
#include "ir.h"
#include "ops/ops.h"

const char *infer_type(const Node *n, Type *out) {
  const OpInfo *info = op_info(n->op);
  if (n->nin < info->min_in || n->nin > info->max_in) {
    if (info->min_in == info->max_in)
      FAIL("%s takes %d operand%s, got %d", info->name, info->min_in,
           info->min_in == 1 ? "" : "s", n->nin);
    FAIL("%s takes %d to %d operands, got %d", info->name, info->min_in, info->max_in, n->nin);
  }
  for (int i = 0; i < info->nattrs; i++)
    if (n->attr[i].kind != info->attr_kind[i])
      FAIL("%s needs attribute '%s' of kind %c", info->name, info->attr_name[i],
           info->attr_kind[i]);
  return op_rules(n->op)->shape(n, out);
}

void node_infer(Node *n) {
  Type t;
  const char *err = infer_type(n, &t);
  if (err)
    error_at(n->loc, NULL, "%s%s%s: %s", op_info(n->op)->name, n->name ? " %" : "",
             n->name ? n->name : "", err);
  n->type = t;
}
