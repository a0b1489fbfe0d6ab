// `import dnas_fast._C` loads this library, whose static initializers register the torch.ops.dnas_fast.* ops.
// A bare module (no pybind11) keeps the build short: the ops are reached through torch.ops, not through this module.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dnas_fast compiled ops (torch.ops.dnas_fast)",
                                      -1, nullptr};
  return PyModule_Create(&module);
}
