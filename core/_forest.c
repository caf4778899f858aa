/*
 * modeld.core._forest: the IsolationForest tree walk, the TreeSHAP table lookups that
 * explain its scores, the drift detector's per-record work (mid-rank codes, CUSUM
 * increments, Lindley's recursion) and the feature matrix of records that give their
 * features, compiled ahead of time: the per-record work of a scored request.
 *
 * core/forest.py compiles a fitted forest into flat node arrays (the servable bundle's form)
 * and hands them to Forest(); scoring then asks Forest.path_length_sums for each record's
 * sum over trees of its leaf path length, and finishes scikit-learn's formula in numpy.
 *
 * Why C: a tree walk is a chain of dependent loads (node -> feature -> value -> compare ->
 * next node). Walking several records through one tree side by side (LANES at a time)
 * overlaps those chains, which no numpy formulation can express; numba could, but it is a JIT
 * and the systemd unit forbids writable-executable memory (docs/performance.md compares them).
 *
 * Safety: the daemon builds a Forest from a bundle it did not write itself, so Forest() checks
 * every index once (roots, children, features, depth) and the walk then needs no bounds
 * checks. A bad bundle raises ValueError/TypeError naming the array and the node; it can never
 * make the walk read outside its arrays. A large batch's walk releases the GIL, so it does
 * not hold up the HTTP threads.
 *
 * Only the Python C API and the buffer protocol are used, so building needs no numpy headers.
 * Sections, one per function: buffer checks, building a Forest, the walk, path_length_sums,
 * TreeSHAP patterns (core/explain.py's Patterns: its own checks, table and pass), drift
 * (core/drift's mid_ranks, Increments and lindley), given features (core/features.py's
 * given_matrix), the types and the module.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

/* How many walks run side by side: enough independent load chains to hide the latency of
 * each, few enough that their state stays in registers. */
#define LANES 8
/* Records per block: a block's float32 rows (20 KiB at 20 features) stay cached while every
 * tree walks them, and each tree's nodes stay cached across the block. */
#define BLOCK_RECORDS 256

/* Tree walks (records x trees) from which a call releases the GIL: about 150 us of work.
 * Below it the walk is over before another thread could use the GIL, and giving it up
 * would only risk waiting for it again behind a thread that holds it for a switch interval
 * (5 ms): a single-record request would pay that, not save it. */
#define RELEASE_GIL_WALKS 16384

/* One node, 16 bytes, so one load brings everything a step needs. The right child is always
 * left + 1 (core/forest.py numbers each tree breadth-first). A leaf is its own left child,
 * tests feature 0 against +inf and sends no NaN right, so a walk that reached it stays there:
 * every walk can take the same number of steps, with no branch. */
typedef struct {
    float threshold;   /* largest float32 <= scikit-learn's float64 threshold; +inf on leaves */
    int32_t feature;   /* input column tested; 0 on leaves */
    int32_t left;      /* global id of the left child; the node itself on leaves */
    int32_t nan_right; /* 1 if a NaN value goes right; 0 on leaves */
} Node;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    int32_t *roots;
    Py_buffer leaf; /* float64 leaf path lengths, by node id; held for the Forest's life */
    Py_ssize_t n_nodes;
    Py_ssize_t n_trees;
    Py_ssize_t n_features;
    int n_levels;
} ForestObject;

/* ------------------------------------------------------------------ buffer checks */

/* The format character of a native-order buffer, or 0 if it has another byte order. */
static char
native_format(const Py_buffer *view)
{
    const char *format = view->format ? view->format : "B";
    const uint16_t probe = 1;
    const int little = *(const uint8_t *)&probe == 1;
    if (format[0] == '@' || format[0] == '=' || (format[0] == '<' && little) ||
        ((format[0] == '>' || format[0] == '!') && !little)) {
        format++;
    }
    /* an empty format, or a byte order alone, names no item: read no further than its NUL */
    return format[0] != '\0' && format[1] == '\0' ? format[0] : 0;
}

/* Get a C-contiguous buffer of `ndim` dimensions whose items are one of `kinds` (struct
 * format characters) of `itemsize` bytes (0: 4 or 8, for an index array, as numpy's intp is
 * either); on failure set a TypeError/ValueError naming `name` and return -1. */
static int
get_buffer(PyObject *object, Py_buffer *view, const char *name, int ndim, const char *kinds,
           Py_ssize_t itemsize, int writable, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) != 0) {
        view->obj = NULL;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array of %s, got %.100s",
                     name, writable ? " writable" : "", what, Py_TYPE(object)->tp_name);
        return -1;
    }
    const char kind = native_format(view);
    const int size_ok = itemsize ? view->itemsize == itemsize
                                 : view->itemsize == 4 || view->itemsize == 8;
    if (kind == 0 || strchr(kinds, kind) == NULL || !size_ok) {
        PyErr_Format(PyExc_TypeError, "%s must be an array of %s, got format '%s'", name, what,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got %d", name, ndim,
                     view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int
get_index_buffer(PyObject *object, Py_buffer *view, const char *name)
{
    return get_buffer(object, view, name, 1, "ilqn", 0, 0, "32- or 64-bit integers");
}

static int64_t
index_at(const Py_buffer *view, Py_ssize_t i)
{
    return view->itemsize == 8 ? ((const int64_t *)view->buf)[i]
                               : ((const int32_t *)view->buf)[i];
}

/* ------------------------------------------------------------------ building a Forest */

/* Fill forest->roots and forest->nodes from the arrays, checking every index: the walk
 * trusts them. Returns 0, or -1 with a ValueError naming the array and the node. */
static int
build_nodes(ForestObject *forest, const Py_buffer *feature, const Py_buffer *threshold,
            const Py_buffer *left_child, const Py_buffer *nan_goes_right,
            const Py_buffer *roots)
{
    const Py_ssize_t n_nodes = forest->n_nodes, n_trees = forest->n_trees;
    const float *thresholds = (const float *)threshold->buf;
    const uint8_t *nan_right = (const uint8_t *)nan_goes_right->buf;
    int result = -1;
    /* Depth of each node from its tree's root; -1 = not reached from the root. */
    int32_t *depth = PyMem_Malloc((size_t)(n_nodes > 0 ? n_nodes : 1) * sizeof(int32_t));
    if (depth == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_nodes; i++) {
        depth[i] = -1;
    }
    int deepest = 0;
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        const int64_t start = index_at(roots, t);
        const int64_t end = t + 1 < n_trees ? index_at(roots, t + 1) : (int64_t)n_nodes;
        /* Each tree ends where the next begins, so this also makes the roots increase. */
        if ((t == 0 && start != 0) || end <= start || end > n_nodes) {
            PyErr_Format(PyExc_ValueError,
                         "roots must start at 0 and increase within the %zd nodes: tree %zd "
                         "spans nodes %lld to %lld",
                         n_nodes, t, (long long)start, (long long)end);
            goto done;
        }
        forest->roots[t] = (int32_t)start;
        depth[start] = 0;
        /* Children come after their parent within the tree, so one pass in id order both
         * checks every node and settles every reachable node's depth. */
        for (int64_t i = start; i < end; i++) {
            Node *node = &forest->nodes[i];
            const int64_t left = index_at(left_child, i);
            if (left == i) {
                node->threshold = INFINITY;
                node->feature = 0;
                node->left = (int32_t)i;
                node->nan_right = 0;
                if (depth[i] > deepest) {
                    deepest = depth[i];
                }
                continue;
            }
            if (left <= i || left + 1 >= end) {
                PyErr_Format(PyExc_ValueError,
                             "left_child[%lld] = %lld: a child must follow its parent within "
                             "its tree (nodes %lld to %lld)",
                             (long long)i, (long long)left, (long long)start,
                             (long long)end - 1);
                goto done;
            }
            const int64_t column = index_at(feature, i);
            if (column < 0 || column >= forest->n_features) {
                PyErr_Format(PyExc_ValueError,
                             "feature[%lld] = %lld is not a column of the %zd features",
                             (long long)i, (long long)column, forest->n_features);
                goto done;
            }
            node->threshold = thresholds[i];
            node->feature = (int32_t)column;
            node->left = (int32_t)left;
            node->nan_right = nan_right[i] != 0;
            if (depth[i] >= 0) {
                const int32_t below = depth[i] + 1;
                depth[left] = depth[left] > below ? depth[left] : below;
                depth[left + 1] = depth[left + 1] > below ? depth[left + 1] : below;
            }
        }
    }
    if (deepest != forest->n_levels) {
        PyErr_Format(PyExc_ValueError, "n_levels is %d but the deepest leaf is at depth %d",
                     forest->n_levels, deepest);
        goto done;
    }
    result = 0;
done:
    PyMem_Free(depth);
    return result;
}

static PyObject *
Forest_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"feature", "threshold", "left_child", "nan_goes_right",
                               "leaf_path_length", "roots", "n_levels", "n_features", NULL};
    PyObject *feature_obj, *threshold_obj, *left_obj, *nan_obj, *leaf_obj, *roots_obj;
    int n_levels;
    Py_ssize_t n_features;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOin:Forest", keywords, &feature_obj,
                                     &threshold_obj, &left_obj, &nan_obj, &leaf_obj,
                                     &roots_obj, &n_levels, &n_features)) {
        return NULL;
    }
    /* Every step reads a feature, leaves included (feature 0), so a record needs one. */
    if (n_levels < 0 || n_features < 1) {
        PyErr_Format(PyExc_ValueError, "n_levels (%d) must be >= 0 and n_features (%zd) >= 1",
                     n_levels, n_features);
        return NULL;
    }
    ForestObject *forest = (ForestObject *)type->tp_alloc(type, 0);
    if (forest == NULL) {
        return NULL;
    }
    forest->n_levels = n_levels;
    forest->n_features = n_features;
    Py_buffer feature = {0}, threshold = {0}, left = {0}, nan_right = {0}, roots = {0};
    int ok = get_index_buffer(feature_obj, &feature, "feature") == 0 &&
             get_buffer(threshold_obj, &threshold, "threshold", 1, "f", 4, 0, "float32") == 0 &&
             get_index_buffer(left_obj, &left, "left_child") == 0 &&
             get_buffer(nan_obj, &nan_right, "nan_goes_right", 1, "?", 1, 0, "bool") == 0 &&
             get_buffer(leaf_obj, &forest->leaf, "leaf_path_length", 1, "d", 8, 0,
                        "float64") == 0 &&
             get_index_buffer(roots_obj, &roots, "roots") == 0;
    if (ok) {
        forest->n_nodes = feature.shape[0];
        forest->n_trees = roots.shape[0];
        const Py_ssize_t n = forest->n_nodes;
        if (threshold.shape[0] != n || left.shape[0] != n || nan_right.shape[0] != n ||
            forest->leaf.shape[0] != n) {
            PyErr_Format(PyExc_ValueError,
                         "node arrays differ in length: feature %zd, threshold %zd, "
                         "left_child %zd, nan_goes_right %zd, leaf_path_length %zd",
                         n, threshold.shape[0], left.shape[0], nan_right.shape[0],
                         forest->leaf.shape[0]);
            ok = 0;
        }
        else if (n > INT32_MAX - 1 || forest->n_features > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "%zd nodes or %zd features are too many", n,
                         forest->n_features);
            ok = 0;
        }
        else if (forest->n_trees == 0 || n == 0) {
            PyErr_SetString(PyExc_ValueError, "a forest needs at least one tree");
            ok = 0;
        }
    }
    if (ok) {
        forest->nodes = PyMem_Malloc((size_t)forest->n_nodes * sizeof(Node));
        forest->roots = PyMem_Malloc((size_t)forest->n_trees * sizeof(int32_t));
        if (forest->nodes == NULL || forest->roots == NULL) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    if (ok) {
        ok = build_nodes(forest, &feature, &threshold, &left, &nan_right, &roots) == 0;
    }
    Py_buffer *used[] = {&feature, &threshold, &left, &nan_right, &roots};
    for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
        if (used[i]->obj != NULL) {
            PyBuffer_Release(used[i]);
        }
    }
    if (!ok) {
        Py_DECREF(forest);
        return NULL;
    }
    return (PyObject *)forest;
}

static void
Forest_dealloc(ForestObject *forest)
{
    PyMem_Free(forest->nodes);
    PyMem_Free(forest->roots);
    if (forest->leaf.obj != NULL) {
        PyBuffer_Release(&forest->leaf);
    }
    Py_TYPE(forest)->tp_free((PyObject *)forest);
}

/* ------------------------------------------------------------------ the walk */

/* Take `steps` steps of LANES walks side by side: lane l starts at node[l] and reads the
 * record at x[l]; node[l] ends at the leaf. `check_nan` is a constant at every call site, so
 * the compiler emits one loop without the NaN test and one with it. */
static inline __attribute__((always_inline)) void
walk(const Node *nodes, int32_t node[LANES], const float *const x[LANES], int steps,
     const int check_nan)
{
    for (int step = 0; step < steps; step++) {
#pragma GCC unroll 8
        for (int l = 0; l < LANES; l++) {
            const Node *n = &nodes[node[l]];
            const float value = x[l][n->feature];
            /* scikit-learn goes left when float64(value) <= threshold: with the threshold
             * rounded down to float32 that is exactly value <= n->threshold, and NaN fails
             * every comparison, so it goes where the node says. */
            int32_t right = value > n->threshold;
            if (check_nan) {
                right |= (value != value) & n->nan_right;
            }
            node[l] = n->left + right;
        }
    }
}

/* Whether any of `count` floats is NaN. */
static int
any_nan(const float *x, Py_ssize_t count)
{
    int found = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        found |= x[i] != x[i];
    }
    return found;
}

/* A few records: lanes are trees, all reading the same record. */
static void
sum_by_tree_lanes(const ForestObject *forest, const float *record, double *out,
                  const int check_nan)
{
    const double *leaf = (const double *)forest->leaf.buf;
    const float *x[LANES];
    int32_t node[LANES];
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) {
        x[l] = record;
    }
    for (Py_ssize_t t = 0; t < forest->n_trees; t += LANES) {
        const Py_ssize_t used = forest->n_trees - t < LANES ? forest->n_trees - t : LANES;
        for (int l = 0; l < LANES; l++) {
            /* Spare lanes repeat the last tree; their leaves are not added. */
            node[l] = forest->roots[t + (l < used ? l : used - 1)];
        }
        walk(forest->nodes, node, x, forest->n_levels, check_nan);
        /* Added one tree after the other, in scikit-learn's order: the same rounding. */
        for (Py_ssize_t l = 0; l < used; l++) {
            sum += leaf[node[l]];
        }
    }
    *out = sum;
}

/* A block of records: lanes are records, all walking the same tree; the trees go one after
 * the other over the whole block, so each record's sum adds them in scikit-learn's order. */
static void
sum_by_record_lanes(const ForestObject *forest, const float *rows, Py_ssize_t n_records,
                    double *out, const int check_nan)
{
    const double *leaf = (const double *)forest->leaf.buf;
    const Py_ssize_t width = forest->n_features;
    const float *x[LANES];
    int32_t node[LANES];
    for (Py_ssize_t r = 0; r < n_records; r++) {
        out[r] = 0.0;
    }
    for (Py_ssize_t t = 0; t < forest->n_trees; t++) {
        const int32_t root = forest->roots[t];
        for (Py_ssize_t first = 0; first < n_records; first += LANES) {
            const Py_ssize_t used = n_records - first < LANES ? n_records - first : LANES;
            for (int l = 0; l < LANES; l++) {
                /* Spare lanes repeat the last record; their leaves are not added. */
                x[l] = rows + (first + (l < used ? l : used - 1)) * width;
                node[l] = root;
            }
            walk(forest->nodes, node, x, forest->n_levels, check_nan);
            for (Py_ssize_t l = 0; l < used; l++) {
                out[first + l] += leaf[node[l]];
            }
        }
    }
}

/* Every record's sum over trees of its leaf path length. Touches no Python object, so it
 * may run without the GIL. */
static void
path_length_sums(const ForestObject *forest, const float *rows, Py_ssize_t n_records,
                 double *out)
{
    const Py_ssize_t width = forest->n_features;
    for (Py_ssize_t start = 0; start < n_records; start += BLOCK_RECORDS) {
        const Py_ssize_t count =
            n_records - start < BLOCK_RECORDS ? n_records - start : BLOCK_RECORDS;
        const float *block = rows + start * width;
        const int has_nan = any_nan(block, count * width);
        if (count < LANES) {
            for (Py_ssize_t r = 0; r < count; r++) {
                if (has_nan) {
                    sum_by_tree_lanes(forest, block + r * width, out + start + r, 1);
                }
                else {
                    sum_by_tree_lanes(forest, block + r * width, out + start + r, 0);
                }
            }
        }
        else if (has_nan) {
            sum_by_record_lanes(forest, block, count, out + start, 1);
        }
        else {
            sum_by_record_lanes(forest, block, count, out + start, 0);
        }
    }
}

/* ------------------------------------------------------------------ Forest.path_length_sums */

PyDoc_STRVAR(Forest_path_length_sums_doc,
"path_length_sums(x, out)\n--\n\n"
"Write into `out` (float64, one per record) each record's sum over trees of its leaf path\n"
"length, trees added in order. `x` is a C-contiguous float32 matrix with one column per\n"
"feature. Releases the GIL while it walks a large batch; raises TypeError/ValueError for\n"
"other inputs.");

static PyObject *
Forest_path_length_sums(ForestObject *forest, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "path_length_sums() takes 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    Py_buffer x, out;
    if (get_buffer(args[0], &x, "x", 2, "f", 4, 0, "float32") != 0) {
        return NULL;
    }
    if (x.shape[1] != forest->n_features) {
        PyErr_Format(PyExc_ValueError,
                     "expected a 2-D matrix with %zd feature columns, got shape (%zd, %zd)",
                     forest->n_features, x.shape[0], x.shape[1]);
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_buffer(args[1], &out, "out", 1, "d", 8, 1, "float64") != 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (out.shape[0] != x.shape[0]) {
        PyErr_Format(PyExc_ValueError, "out has %zd entries for %zd records", out.shape[0],
                     x.shape[0]);
        PyBuffer_Release(&out);
        PyBuffer_Release(&x);
        return NULL;
    }
    const float *rows = (const float *)x.buf;
    double *sums = (double *)out.buf;
    if (x.shape[0] * forest->n_trees >= RELEASE_GIL_WALKS) {
        Py_BEGIN_ALLOW_THREADS
        path_length_sums(forest, rows, x.shape[0], sums);
        Py_END_ALLOW_THREADS
    }
    else {
        path_length_sums(forest, rows, x.shape[0], sums);
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ TreeSHAP patterns */

/* core/explain.py's exact TreeSHAP: the Shapley values of a leaf (or of a sibling pair, a
 * "twig") depend on a record only through a bit pattern, which of the distinct features on
 * its path ("slots") the record disagrees with, so the explainer tabulates them for every
 * pattern when it is built. Explaining a record is then, for each twig, its path's tests
 * giving the pattern and one row of the table: the twig's value for each slot at that
 * pattern, added to the slot's feature. In numpy that was half a dozen gathers of ~20,000
 * elements per record; here it is one pass with no scratch.
 *
 * The rows of a record are scattered over a table of megabytes, so the pass is bound by
 * memory, not arithmetic: Patterns() copies the table into its own allocation with every
 * row on one cache line (rows padded to a power of two of doubles, the table aligned to its
 * size) and huge pages where the kernel gives them (one TLB entry per 2 MiB instead of per
 * 4 KiB), and add() prefetches each twig's row as soon as its pattern is known. */

/* A test on a twig's path, 8 bytes: the record's test list streams through the cache once. */
typedef struct {
    float threshold;  /* largest float32 <= scikit-learn's threshold, as in Node */
    uint16_t feature; /* input column tested */
    uint8_t bit;      /* the pattern bit a record that disagrees with the path sets */
    uint8_t flags;    /* TEST_PATH_RIGHT | TEST_NAN_RIGHT */
} Test;

#define TEST_PATH_RIGHT 1 /* the path goes right here */
#define TEST_NAN_RIGHT 2  /* a NaN value goes right */

/* A twig, 8 bytes; its tests and slots follow the previous twig's. */
typedef struct {
    uint32_t row;   /* where its pattern-0 row starts in the table, in doubles */
    uint16_t tests; /* how many tests on its path */
    uint8_t slots;  /* how many values a row holds: its slots */
    uint8_t shift;  /* a row is 1 << shift doubles: the power of two >= slots */
} Twig;

/* core/explain.py's tables have at most 8 slots and 9 pattern bits (8 slots and the pair's
 * own); a row of 8 doubles is one 64-byte cache line. */
#define MAX_SLOTS 8
#define PATTERN_BITS 16
#define HUGE_PAGE ((size_t)2 << 20)

typedef struct {
    PyObject_HEAD
    Test *tests;
    Twig *twigs;
    uint16_t *slot_feature; /* each twig's slots' features, twig after twig */
    double *table;          /* rows as laid out by build_table; free() */
    Py_ssize_t n_twigs;
    Py_ssize_t n_features;
} PatternsObject;

/* Check an offsets array (n_twigs + 1 entries rising from 0 to `total`, by at most `limit`)
 * and write each twig's count of tests (or, with `slots`, of slots). Returns 0, or -1 with
 * a ValueError. */
static int
check_offsets(const Py_buffer *view, const char *name, Py_ssize_t total, int64_t limit,
              Twig *twigs, int slots)
{
    const Py_ssize_t n = view->shape[0];
    int64_t before = 0;
    for (Py_ssize_t t = 0; t < n; t++) {
        const int64_t at = index_at(view, t);
        if (at < before || at > total || (t == 0 && at != 0) || (t == n - 1 && at != total) ||
            (t > 0 && at - before > limit)) {
            PyErr_Format(PyExc_ValueError,
                         "%s[%zd] = %lld: offsets must rise from 0 to %zd, by at most %lld",
                         name, t, (long long)at, total, (long long)limit);
            return -1;
        }
        if (t > 0) {
            if (slots) {
                twigs[t - 1].slots = (uint8_t)(at - before);
            }
            else {
                twigs[t - 1].tests = (uint16_t)(at - before);
            }
        }
        before = at;
    }
    return 0;
}

/* A feature index, checked against the record width. */
static int
check_feature(const Py_buffer *view, Py_ssize_t i, Py_ssize_t n_features, const char *name,
              uint16_t *into)
{
    const int64_t column = index_at(view, i);
    if (column < 0 || column >= n_features) {
        PyErr_Format(PyExc_ValueError, "%s[%zd] = %lld is not a column of the %zd features",
                     name, i, (long long)column, n_features);
        return -1;
    }
    *into = (uint16_t)column;
    return 0;
}

/* Fill the packed arrays from the checked buffers, checking every index (add() trusts
 * them), and copy the table into rows of a power of two of doubles. Returns 0, or -1 with
 * a ValueError naming the array and the entry (or MemoryError). */
static int
build_patterns(PatternsObject *p, const Py_buffer *feature, const Py_buffer *threshold,
               const Py_buffer *nan_right, const Py_buffer *goes_right, const Py_buffer *bit,
               const Py_buffer *twig_tests, const Py_buffer *slot_feature,
               const Py_buffer *twig_slots, const Py_buffer *twig_values,
               const Py_buffer *values)
{
    const Py_ssize_t n_tests = feature->shape[0], n_slots = slot_feature->shape[0];
    const float *thresholds = (const float *)threshold->buf;
    const uint8_t *nan = (const uint8_t *)nan_right->buf;
    const uint8_t *right = (const uint8_t *)goes_right->buf;
    for (Py_ssize_t i = 0; i < n_tests; i++) {
        const int64_t b = index_at(bit, i);
        if (check_feature(feature, i, p->n_features, "test_feature", &p->tests[i].feature)) {
            return -1;
        }
        if (b < 0 || b >= PATTERN_BITS) {
            PyErr_Format(PyExc_ValueError, "test_bit[%zd] = %lld is not a bit below %d", i,
                         (long long)b, PATTERN_BITS);
            return -1;
        }
        p->tests[i].threshold = thresholds[i];
        p->tests[i].bit = (uint8_t)b;
        p->tests[i].flags = (right[i] ? TEST_PATH_RIGHT : 0) | (nan[i] ? TEST_NAN_RIGHT : 0);
    }
    for (Py_ssize_t s = 0; s < n_slots; s++) {
        if (check_feature(slot_feature, s, p->n_features, "slot_feature",
                          &p->slot_feature[s])) {
            return -1;
        }
    }
    if (check_offsets(twig_tests, "twig_tests", n_tests, UINT16_MAX, p->twigs, 0) != 0 ||
        check_offsets(twig_slots, "twig_slots", n_slots, MAX_SLOTS, p->twigs, 1) != 0) {
        return -1;
    }
    /* Every pattern a record can make sets only bits of its twig's tests: at most `bits`,
     * so each twig's values must hold (bits + 1) rows. */
    const double *source = (const double *)values->buf;
    const Py_ssize_t n_values = values->shape[0];
    uint32_t *bits = PyMem_Malloc((size_t)(p->n_twigs ? p->n_twigs : 1) * sizeof(uint32_t));
    if (bits == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const Test *test = p->tests;
    uint64_t size = 0;
    int result = -1;
    for (Py_ssize_t t = 0; t < p->n_twigs; t++) {
        Twig *twig = &p->twigs[t];
        bits[t] = 0;
        for (int k = 0; k < twig->tests; k++, test++) {
            bits[t] |= 1u << test->bit;
        }
        const int64_t offset = index_at(twig_values, t);
        if (offset < 0 || offset + ((int64_t)bits[t] + 1) * twig->slots > n_values) {
            PyErr_Format(PyExc_ValueError,
                         "twig_values[%zd] = %lld: %lld rows of %d values from there pass "
                         "the %zd values",
                         t, (long long)offset, (long long)bits[t] + 1, twig->slots, n_values);
            goto done;
        }
        twig->shift = 0;
        while ((1 << twig->shift) < twig->slots) {
            twig->shift++;
        }
        size += ((uint64_t)bits[t] + 1) << twig->shift;
    }
    if (size > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "a table of %llu values is too large",
                     (unsigned long long)size);
        goto done;
    }
    /* Place the twigs' blocks widest rows first, so that every row starts at a multiple of
     * its own width from the (cache-line aligned) start. */
    uint64_t at = 0;
    for (int shift = 3; shift >= 0; shift--) {
        for (Py_ssize_t t = 0; t < p->n_twigs; t++) {
            if (p->twigs[t].shift == shift) {
                p->twigs[t].row = (uint32_t)at;
                at += ((uint64_t)bits[t] + 1) << shift;
            }
        }
    }
    const size_t bytes = (size_t)(size ? size : 1) * sizeof(double);
    const size_t alignment = bytes >= HUGE_PAGE ? HUGE_PAGE : 64;
    void *table = NULL;
    if (posix_memalign(&table, alignment, (bytes + alignment - 1) / alignment * alignment)) {
        PyErr_NoMemory();
        goto done;
    }
#ifdef MADV_HUGEPAGE
    if (alignment == HUGE_PAGE) {
        (void)madvise(table, (bytes + alignment - 1) / alignment * alignment, MADV_HUGEPAGE);
    }
#endif
    p->table = table;
    memset(p->table, 0, bytes);
    for (Py_ssize_t t = 0; t < p->n_twigs; t++) {
        const Twig *twig = &p->twigs[t];
        const double *from = source + index_at(twig_values, t);
        for (uint32_t m = 0; m <= bits[t]; m++) {
            memcpy(p->table + twig->row + ((uint64_t)m << twig->shift), from + m * twig->slots,
                   twig->slots * sizeof(double));
        }
    }
    result = 0;
done:
    PyMem_Free(bits);
    return result;
}

static PyObject *
Patterns_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"test_feature", "test_threshold", "test_nan_right",
                               "test_goes_right", "test_bit", "twig_tests", "slot_feature",
                               "twig_slots", "twig_values", "values", "n_features", NULL};
    PyObject *objects[10];
    Py_ssize_t n_features;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOn:Patterns", keywords,
                                     &objects[0], &objects[1], &objects[2], &objects[3],
                                     &objects[4], &objects[5], &objects[6], &objects[7],
                                     &objects[8], &objects[9], &n_features)) {
        return NULL;
    }
    if (n_features < 0 || n_features > UINT16_MAX) {
        PyErr_Format(PyExc_ValueError, "n_features (%zd) must be 0 to %d", n_features,
                     UINT16_MAX);
        return NULL;
    }
    PatternsObject *p = (PatternsObject *)type->tp_alloc(type, 0);
    if (p == NULL) {
        return NULL;
    }
    p->n_features = n_features;
    Py_buffer feature = {0}, threshold = {0}, nan_right = {0}, goes_right = {0}, bit = {0},
              twig_tests = {0}, slot_feature = {0}, twig_slots = {0}, twig_values = {0},
              values = {0};
    int ok =
        get_index_buffer(objects[0], &feature, "test_feature") == 0 &&
        get_buffer(objects[1], &threshold, "test_threshold", 1, "f", 4, 0, "float32") == 0 &&
        get_buffer(objects[2], &nan_right, "test_nan_right", 1, "?", 1, 0, "bool") == 0 &&
        get_buffer(objects[3], &goes_right, "test_goes_right", 1, "?", 1, 0, "bool") == 0 &&
        get_index_buffer(objects[4], &bit, "test_bit") == 0 &&
        get_index_buffer(objects[5], &twig_tests, "twig_tests") == 0 &&
        get_index_buffer(objects[6], &slot_feature, "slot_feature") == 0 &&
        get_index_buffer(objects[7], &twig_slots, "twig_slots") == 0 &&
        get_index_buffer(objects[8], &twig_values, "twig_values") == 0 &&
        get_buffer(objects[9], &values, "values", 1, "d", 8, 0, "float64") == 0;
    if (ok) {
        const Py_ssize_t n_tests = feature.shape[0];
        p->n_twigs = twig_values.shape[0];
        if (threshold.shape[0] != n_tests || nan_right.shape[0] != n_tests ||
            goes_right.shape[0] != n_tests || bit.shape[0] != n_tests) {
            PyErr_Format(PyExc_ValueError,
                         "test arrays differ in length: test_feature %zd, test_threshold %zd, "
                         "test_nan_right %zd, test_goes_right %zd, test_bit %zd",
                         n_tests, threshold.shape[0], nan_right.shape[0],
                         goes_right.shape[0], bit.shape[0]);
            ok = 0;
        }
        else if (twig_tests.shape[0] != p->n_twigs + 1 ||
                 twig_slots.shape[0] != p->n_twigs + 1) {
            PyErr_Format(PyExc_ValueError,
                         "twig_tests (%zd) and twig_slots (%zd) need one more entry than the "
                         "%zd twig_values",
                         twig_tests.shape[0], twig_slots.shape[0], p->n_twigs);
            ok = 0;
        }
    }
    if (ok) {
        p->tests = PyMem_Malloc((size_t)(feature.shape[0] ? feature.shape[0] : 1) * sizeof(Test));
        p->twigs = PyMem_Malloc((size_t)(p->n_twigs ? p->n_twigs : 1) * sizeof(Twig));
        p->slot_feature = PyMem_Malloc(
            (size_t)(slot_feature.shape[0] ? slot_feature.shape[0] : 1) * sizeof(uint16_t));
        if (p->tests == NULL || p->twigs == NULL || p->slot_feature == NULL) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    if (ok) {
        ok = build_patterns(p, &feature, &threshold, &nan_right, &goes_right, &bit,
                            &twig_tests, &slot_feature, &twig_slots, &twig_values,
                            &values) == 0;
    }
    Py_buffer *used[] = {&feature, &threshold, &nan_right, &goes_right, &bit, &twig_tests,
                         &slot_feature, &twig_slots, &twig_values, &values};
    for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
        if (used[i]->obj != NULL) {
            PyBuffer_Release(used[i]);
        }
    }
    if (!ok) {
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static void
Patterns_dealloc(PatternsObject *p)
{
    PyMem_Free(p->tests);
    PyMem_Free(p->twigs);
    PyMem_Free(p->slot_feature);
    free(p->table);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* Twigs whose rows are fetched ahead of their sums: each row is prefetched as soon as its
 * pattern is known and added AHEAD twigs later, with that many misses in flight. */
#define AHEAD 16

/* Twig lookups (records x twigs) from which add() releases the GIL: about 150 us of work, three
 * records of 100 default trees; see RELEASE_GIL_WALKS for why not below. */
#define RELEASE_GIL_TWIGS 8192

/* Add one record's values to its row of `out`. `check_nan` is a constant at both call sites,
 * so the record without NaN (nearly all) gets a loop without the NaN test. */
static inline __attribute__((always_inline)) void
add_record(const PatternsObject *p, const float *x, double *out, const int check_nan)
{
    const Test *test = p->tests;
    const uint16_t *feature = p->slot_feature;
    const double *row[AHEAD];
    const uint16_t *row_feature[AHEAD];
    int row_slots[AHEAD];
    for (Py_ssize_t t = 0; t < p->n_twigs + AHEAD; t++) {
        const int ring = (int)(t % AHEAD);
        if (t >= AHEAD) {
            for (int s = 0; s < row_slots[ring]; s++) {
                out[row_feature[ring][s]] += row[ring][s];
            }
        }
        if (t < p->n_twigs) {
            const Twig *twig = &p->twigs[t];
            uint32_t pattern = 0;
            for (int k = 0; k < twig->tests; k++, test++) {
                const float value = x[test->feature];
                /* The walk's comparison (see walk): NaN fails it and goes where the node
                 * says. */
                uint32_t right = value > test->threshold;
                if (check_nan) {
                    right |= (value != value) & (test->flags >> 1);
                }
                pattern |= (right ^ (test->flags & TEST_PATH_RIGHT)) << test->bit;
            }
            row[ring] = p->table + twig->row + ((uint64_t)pattern << twig->shift);
            __builtin_prefetch(row[ring]);
            row_feature[ring] = feature;
            row_slots[ring] = twig->slots;
            feature += twig->slots;
        }
    }
}

/* Every record's values, added to its row of `out`; may run without the GIL. */
static void
add_records(const PatternsObject *p, const float *rows, Py_ssize_t n_records, double *out)
{
    const Py_ssize_t width = p->n_features;
    for (Py_ssize_t r = 0; r < n_records; r++) {
        if (any_nan(rows + r * width, width)) {
            add_record(p, rows + r * width, out + r * width, 1);
        }
        else {
            add_record(p, rows + r * width, out + r * width, 0);
        }
    }
}

PyDoc_STRVAR(Patterns_add_doc,
"add(x, out)\n--\n\n"
"Add to `out` (float64, records x features) each record's tabulated Shapley values, one per\n"
"(twig, slot), onto the slot's feature. `x` is a C-contiguous float32 matrix with one\n"
"column per feature. Releases the GIL for a few records or more (as path_length_sums does\n"
"for a large batch); raises TypeError/ValueError for other inputs.");

static PyObject *
Patterns_add(PatternsObject *p, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "add() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer x, out;
    if (get_buffer(args[0], &x, "x", 2, "f", 4, 0, "float32") != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &out, "out", 2, "d", 8, 1, "float64") != 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (x.shape[1] != p->n_features || out.shape[0] != x.shape[0] ||
        out.shape[1] != p->n_features) {
        PyErr_Format(PyExc_ValueError,
                     "expected x and out of %zd feature columns and as many rows, got shapes "
                     "(%zd, %zd) and (%zd, %zd)",
                     p->n_features, x.shape[0], x.shape[1], out.shape[0], out.shape[1]);
        PyBuffer_Release(&out);
        PyBuffer_Release(&x);
        return NULL;
    }
    const float *rows = (const float *)x.buf;
    double *sums = (double *)out.buf;
    if (x.shape[0] * p->n_twigs >= RELEASE_GIL_TWIGS) {
        Py_BEGIN_ALLOW_THREADS
        add_records(p, rows, x.shape[0], sums);
        Py_END_ALLOW_THREADS
    }
    else {
        add_records(p, rows, x.shape[0], sums);
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
}

static PyMethodDef Patterns_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Patterns_add, METH_FASTCALL, Patterns_add_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Patterns_doc,
"Patterns(test_feature, test_threshold, test_nan_right, test_goes_right, test_bit,\n"
"         twig_tests, slot_feature, twig_slots, twig_values, values, n_features)\n--\n\n"
"core/explain.py's TreeSHAP tables, checked and packed: twig t's path tests are entries\n"
"twig_tests[t] to twig_tests[t + 1] of the test_ arrays (a record that disagrees with one\n"
"sets bit test_bit of its pattern), its slots' features are slot_feature[twig_slots[t]:\n"
"twig_slots[t + 1]] (at most 8), and its value for slot s at pattern m is\n"
"values[twig_values[t] + m * slots + s]. The table is copied: `values` can go. Immutable;\n"
"safe to use from several threads at once. Raises TypeError for an array of the wrong type\n"
"and ValueError for an index out of range.");

static PyTypeObject PatternsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeld.core._forest.Patterns",
    .tp_basicsize = sizeof(PatternsObject),
    .tp_dealloc = (destructor)Patterns_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Patterns_doc,
    .tp_methods = Patterns_methods,
    .tp_new = Patterns_new,
};

/* ------------------------------------------------------------------ drift: ranks and CUSUMs */

/* core/drift watches every scored record: each value is coded by its mid-rank against its
 * column's reference quantiles, each of a few hundred CUSUMs gets an increment from two
 * statistics of the codes, and the CUSUMs advance by Lindley's recursion. In numpy that was
 * 10 us a record on the monitoring thread, holding the GIL the HTTP threads wait for: one
 * searchsorted over every column's keys (13 steps of cache misses per value, twice), an
 * (n, 500) matrix of statistics gathered twice, and a Python loop over the records. */

/* Values x streams from which a call releases the GIL (about 100 us of work), as in the walk. */
#define RELEASE_GIL_DRIFT 131072

/* #(grid <= v) over a sorted grid of q >= 1 values: a binary search. */
static inline Py_ssize_t
count_upto(const double *grid, Py_ssize_t q, double v)
{
    const double *base = grid;
    while (q > 1) {
        const Py_ssize_t half = q / 2;
        base += half * (Py_ssize_t)(base[half - 1] <= v);
        q -= half;
    }
    return (base - grid) + (*base <= v);
}

/* Each value's #(grid < v) + #(grid <= v) against its column's grid. The searches of a
 * record's columns go step by step side by side: one search is a chain of dependent loads,
 * a record's are independent, so the processor overlaps them. Each step is arithmetic, not
 * conditional (the compiler would branch, and a random value mispredicts half the branches).
 * #(grid <= v) differs from #(grid < v) only when v is in the grid, so it is searched for
 * only then. A NaN compares false everywhere: it counts 0 below and 0 up to it. */
static void
mid_ranks_of(const double *grid, Py_ssize_t q, const double *values, Py_ssize_t n,
             Py_ssize_t width, Py_ssize_t first, int64_t *out, Py_ssize_t *below)
{
    const Py_ssize_t stride = 2 * q + 2;
    const double *grids = grid + first * q;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *x = values + i * width;
        for (Py_ssize_t j = 0; j < width; j++) {
            below[j] = 0;
        }
        for (Py_ssize_t left = q; left > 1;) {
            const Py_ssize_t half = left / 2;
            for (Py_ssize_t j = 0; j < width; j++) {
                below[j] += half * (Py_ssize_t)(grids[j * q + below[j] + half - 1] < x[j]);
            }
            left -= half;
        }
        for (Py_ssize_t j = 0; j < width; j++) {
            const double *g = grids + j * q;
            const Py_ssize_t b = below[j] + (g[below[j]] < x[j]);
            const Py_ssize_t m = b == q || g[b] != x[j] ? 2 * b
                                                       : 2 * b + count_upto(g + b, q - b, x[j]);
            out[i * width + j] = (int64_t)((first + j) * stride + m);
        }
    }
}

PyDoc_STRVAR(mid_ranks_doc,
"mid_ranks(grid, values, first, out)\n--\n\n"
"Write into `out` (int64, the shape of `values`) the mid-rank code of each value of\n"
"`values` (float64, n x w) against row first + j of `grid` (float64, columns x q, each row\n"
"sorted) for column j: (first + j) * (2q + 2) + #(row < v) + #(row <= v). A NaN codes as\n"
"(first + j) * (2q + 2). Raises TypeError/ValueError for other inputs.");

static PyObject *
mid_ranks(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "mid_ranks() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    const Py_ssize_t first = PyLong_AsSsize_t(args[2]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer grid, values, out;
    if (get_buffer(args[0], &grid, "grid", 2, "d", 8, 0, "float64") != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &values, "values", 2, "d", 8, 0, "float64") != 0) {
        PyBuffer_Release(&grid);
        return NULL;
    }
    if (get_buffer(args[3], &out, "out", 2, "lq", 8, 1, "int64") != 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&grid);
        return NULL;
    }
    const Py_ssize_t n = values.shape[0], width = values.shape[1], q = grid.shape[1];
    Py_ssize_t *below = NULL;
    if (first < 0 || first + width > grid.shape[0] || q < 1) {
        PyErr_Format(PyExc_ValueError, "columns %zd to %zd are not all rows of a grid of "
                     "shape (%zd, %zd)", first, first + width - 1, grid.shape[0], q);
    }
    else if (out.shape[0] != n || out.shape[1] != width) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd) for values of shape "
                     "(%zd, %zd)", out.shape[0], out.shape[1], n, width);
    }
    else if ((below = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(width + 1))) == NULL) {
        PyErr_NoMemory();
    }
    else if (n * width >= RELEASE_GIL_DRIFT / 8) {
        Py_BEGIN_ALLOW_THREADS
        mid_ranks_of(grid.buf, q, values.buf, n, width, first, out.buf, below);
        Py_END_ALLOW_THREADS
    }
    else {
        mid_ranks_of(grid.buf, q, values.buf, n, width, first, out.buf, below);
    }
    PyMem_Free(below);
    PyBuffer_Release(&out);
    PyBuffer_Release(&values);
    PyBuffer_Release(&grid);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Lindley's recursion S = max(0, S + x) row by row, and each stream's peak over the batch;
 * the same operations in the same order as numpy's add and maximum, so the same bits. */
static void
advance_cusums(double *cusum, double *peak, const double *inc, Py_ssize_t n, Py_ssize_t k)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *row = inc + i * k;
        for (Py_ssize_t j = 0; j < k; j++) {
            double s = cusum[j] + row[j];
            s = s < 0.0 ? 0.0 : s;
            cusum[j] = s;
            peak[j] = s > peak[j] ? s : peak[j];
        }
    }
}

PyDoc_STRVAR(lindley_doc,
"lindley(cusum, increments, peak)\n--\n\n"
"Advance the CUSUMs `cusum` (float64, k, updated in place) through `increments` (float64,\n"
"n x k) by S = max(0, S + x) row by row, raising `peak` (float64, k, in place) to the\n"
"highest value each reached. Raises TypeError/ValueError for other inputs.");

static PyObject *
lindley(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "lindley() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer cusum, inc, peak;
    if (get_buffer(args[0], &cusum, "cusum", 1, "d", 8, 1, "float64") != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &inc, "increments", 2, "d", 8, 0, "float64") != 0) {
        PyBuffer_Release(&cusum);
        return NULL;
    }
    if (get_buffer(args[2], &peak, "peak", 1, "d", 8, 1, "float64") != 0) {
        PyBuffer_Release(&inc);
        PyBuffer_Release(&cusum);
        return NULL;
    }
    const Py_ssize_t n = inc.shape[0], k = cusum.shape[0];
    if (inc.shape[1] != k || peak.shape[0] != k) {
        PyErr_Format(PyExc_ValueError, "increments of shape (%zd, %zd) and a peak of %zd for "
                     "%zd CUSUMs", n, inc.shape[1], peak.shape[0], k);
    }
    else if (n * k >= RELEASE_GIL_DRIFT) {
        Py_BEGIN_ALLOW_THREADS
        advance_cusums(cusum.buf, peak.buf, inc.buf, n, k);
        Py_END_ALLOW_THREADS
    }
    else {
        advance_cusums(cusum.buf, peak.buf, inc.buf, n, k);
    }
    PyBuffer_Release(&peak);
    PyBuffer_Release(&inc);
    PyBuffer_Release(&cusum);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A drift engine's statistics and streams (core/drift/engine.py's Engine): each stream's
 * increment is a * s + b * t for two statistics s, t of the record's codes: a column's normal
 * score y or y^2, the product of two columns' uniform scores, "carries a value", the anomaly
 * flag, the missing mark or 1. Increments() keeps only the statistics some stream reads, in
 * a row that stays in L1; numpy built all of them (over 500 for 21 columns) as an (n, 500)
 * matrix that left the cache, then gathered it twice. */

typedef struct {
    PyObject_HEAD
    double *table;    /* normal scores by flat code (columns * stride) */
    double *utable;   /* uniform scores */
    double *ctable;   /* "carries a value" */
    int32_t *pair;    /* the two columns of each product statistic, 2 per product */
    int32_t *stat;    /* per stream: its two statistics' places in the row, 2 per stream */
    double *coef;     /* per stream: a, b */
    Py_ssize_t columns, stride, n_pairs, n_streams, row_size;
} IncrementsObject;

/* The row: y by column, y^2 by column, "carries a value" by column, the flag, the missing
 * mark, 1, then the products. Engine numbers its statistics y, y^2, every product a * cols +
 * b, carried, flag, missing, 1; place() maps one of those to the row, adding products as
 * they are first read. Returns -1 with a ValueError for an index out of range. */
static Py_ssize_t
place(IncrementsObject *s, int64_t j, Py_ssize_t stream)
{
    const Py_ssize_t cols = s->columns, products = cols * cols, base = 3 * cols + 3;
    if (j < 0 || j >= 3 * cols + products + 3) {
        PyErr_Format(PyExc_ValueError, "stream %zd reads statistic %lld, outside 0..%zd",
                     stream, (long long)j, 3 * cols + products + 2);
        return -1;
    }
    if (j < 2 * cols) {
        return j;
    }
    if (j >= 2 * cols + products) {
        return j - products;  /* carried, flag, missing, 1 */
    }
    const int32_t a = (int32_t)((j - 2 * cols) / cols), b = (int32_t)((j - 2 * cols) % cols);
    for (Py_ssize_t p = 0; p < s->n_pairs; p++) {
        if (s->pair[2 * p] == a && s->pair[2 * p + 1] == b) {
            return base + p;
        }
    }
    s->pair[2 * s->n_pairs] = a;
    s->pair[2 * s->n_pairs + 1] = b;
    return base + s->n_pairs++;
}

static double *
copy_table(const Py_buffer *view)
{
    double *copy = PyMem_Malloc(view->len ? view->len : 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, view->buf, view->len);
    return copy;
}

static void
Increments_dealloc(IncrementsObject *s)
{
    PyMem_Free(s->table);
    PyMem_Free(s->utable);
    PyMem_Free(s->ctable);
    PyMem_Free(s->pair);
    PyMem_Free(s->stat);
    PyMem_Free(s->coef);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
Increments_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"table", "utable", "ctable", "columns", "a_stat", "b_stat",
                               "coef_a", "coef_b", NULL};
    PyObject *objects[8];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO:Increments", keywords,
                                     &objects[0], &objects[1], &objects[2], &objects[3],
                                     &objects[4], &objects[5], &objects[6], &objects[7])) {
        return NULL;
    }
    const Py_ssize_t columns = PyLong_AsSsize_t(objects[3]);
    if (columns == -1 && PyErr_Occurred()) {
        return NULL;
    }
    static const char *names[] = {"table", "utable", "ctable", NULL, "a_stat", "b_stat",
                                  "coef_a", "coef_b"};
    Py_buffer views[8];
    int got = 0;
    IncrementsObject *s = NULL;
    for (; got < 8; got++) {
        views[got].obj = NULL;
        if (got == 3) {
            continue;
        }
        const int index = got == 4 || got == 5;
        if ((index ? get_index_buffer(objects[got], &views[got], names[got])
                   : get_buffer(objects[got], &views[got], names[got], 1, "d", 8, 0,
                                "float64")) != 0) {
            goto done;
        }
    }
    const Py_ssize_t size = views[0].shape[0], streams = views[4].shape[0];
    if (columns < 1 || size % columns != 0 || size / columns < 2) {
        PyErr_Format(PyExc_ValueError, "table has %zd entries, not a table of codes for each "
                     "of %zd columns", size, columns);
        goto done;
    }
    for (int i = 1; i < 8; i++) {
        const Py_ssize_t want = i < 3 ? size : streams;
        if (i != 3 && views[i].shape[0] != want) {
            PyErr_Format(PyExc_ValueError, "%s has %zd entries, expected %zd", names[i],
                         views[i].shape[0], want);
            goto done;
        }
    }
    s = (IncrementsObject *)type->tp_alloc(type, 0);
    if (s == NULL) {
        goto done;
    }
    s->columns = columns;
    s->stride = size / columns;
    s->n_streams = streams;
    s->table = copy_table(&views[0]);
    s->utable = copy_table(&views[1]);
    s->ctable = copy_table(&views[2]);
    s->pair = PyMem_Malloc(sizeof(int32_t) * 2 * (size_t)(2 * streams + 1));
    s->stat = PyMem_Malloc(sizeof(int32_t) * 2 * (size_t)(streams + 1));
    s->coef = PyMem_Malloc(sizeof(double) * 2 * (size_t)(streams + 1));
    if (s->table == NULL || s->utable == NULL || s->ctable == NULL || s->pair == NULL ||
        s->stat == NULL || s->coef == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(s);
        goto done;
    }
    const double *coef_a = views[6].buf, *coef_b = views[7].buf;
    for (Py_ssize_t k = 0; k < streams; k++) {
        const Py_ssize_t a = place(s, index_at(&views[4], k), k);
        const Py_ssize_t b = a < 0 ? -1 : place(s, index_at(&views[5], k), k);
        if (b < 0) {
            Py_CLEAR(s);
            goto done;
        }
        s->stat[2 * k] = (int32_t)a;
        s->stat[2 * k + 1] = (int32_t)b;
        s->coef[2 * k] = coef_a[k];
        s->coef[2 * k + 1] = coef_b[k];
    }
    s->row_size = 3 * columns + 3 + s->n_pairs;
done:
    for (int i = 0; i < got; i++) {
        if (views[i].obj != NULL) {
            PyBuffer_Release(&views[i]);
        }
    }
    return (PyObject *)s;
}

/* 0 if every code of n records indexes the tables, else -1 with a ValueError naming it. */
static int
check_codes(const IncrementsObject *s, const int64_t *code, Py_ssize_t n)
{
    const Py_ssize_t limit = s->columns * s->stride;
    for (Py_ssize_t i = 0; i < n * s->columns; i++) {
        if (code[i] < 0 || code[i] >= limit) {
            PyErr_Format(PyExc_ValueError, "code %lld of record %zd is outside the tables "
                         "(0..%zd)", (long long)code[i], i / s->columns, limit - 1);
            return -1;
        }
    }
    return 0;
}

/* One record's row of statistics from its codes, flag and missing mark; `row` has room for
 * row_size values and then the record's uniform scores. */
static inline void
fill_row(const IncrementsObject *s, const int64_t *code, double flag, double missing,
         double *row)
{
    const Py_ssize_t cols = s->columns, base = 3 * cols + 3;
    double *u = row + s->row_size;
    for (Py_ssize_t c = 0; c < cols; c++) {
        const double y = s->table[code[c]];
        row[c] = y;
        row[cols + c] = y * y;
        row[2 * cols + c] = s->ctable[code[c]];
        u[c] = s->utable[code[c]];
    }
    row[3 * cols] = flag;
    row[3 * cols + 1] = missing;
    row[3 * cols + 2] = 1.0;
    for (Py_ssize_t p = 0; p < s->n_pairs; p++) {
        row[base + p] = u[s->pair[2 * p]] * u[s->pair[2 * p + 1]];
    }
}

/* Stream k's increment from a filled row: (a * s) + (b * t), numpy's order. */
static inline double
stream_increment(const IncrementsObject *s, const double *row, Py_ssize_t k)
{
    double x = row[s->stat[2 * k]] * s->coef[2 * k];
    x += row[s->stat[2 * k + 1]] * s->coef[2 * k + 1];
    return x;
}

static void
add_increments(const IncrementsObject *s, const int64_t *codes, const uint8_t *flags,
               const uint8_t *missing, Py_ssize_t n, double *row, double *out)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        fill_row(s, codes + i * s->columns, flags[i], missing == NULL ? 0.0 : missing[i], row);
        double *inc = out + i * s->n_streams;
        for (Py_ssize_t k = 0; k < s->n_streams; k++) {
            inc[k] = stream_increment(s, row, k);
        }
    }
}

PyDoc_STRVAR(Increments_add_doc,
"add(codes, flags, missing, out)\n--\n\n"
"Write into `out` (float64, n x streams) the increments of n records given their flat codes\n"
"(int64, n x columns, as RankTransform.flat_codes makes them), anomaly flags and missing\n"
"marks (bool, n each; `missing` may be None: none missing). Releases the GIL for a large\n"
"batch; raises TypeError/ValueError for other inputs, or a code outside the tables.");

static PyObject *
Increments_add(IncrementsObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "add() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer codes, flags, missing, out;
    missing.obj = NULL;
    if (get_buffer(args[0], &codes, "codes", 2, "lq", 8, 0, "int64") != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &flags, "flags", 1, "?", 1, 0, "bool") != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (args[2] != Py_None &&
        get_buffer(args[2], &missing, "missing", 1, "?", 1, 0, "bool") != 0) {
        PyBuffer_Release(&flags);
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (get_buffer(args[3], &out, "out", 2, "d", 8, 1, "float64") != 0) {
        if (missing.obj != NULL) {
            PyBuffer_Release(&missing);
        }
        PyBuffer_Release(&flags);
        PyBuffer_Release(&codes);
        return NULL;
    }
    const Py_ssize_t n = codes.shape[0];
    double *row = NULL;
    if (codes.shape[1] != s->columns || flags.shape[0] != n ||
        (missing.obj != NULL && missing.shape[0] != n) || out.shape[0] != n ||
        out.shape[1] != s->n_streams) {
        PyErr_Format(PyExc_ValueError, "codes (%zd, %zd), flags, missing and out (%zd, %zd) do "
                     "not fit %zd records of %zd columns and %zd streams", n, codes.shape[1],
                     out.shape[0], out.shape[1], n, s->columns, s->n_streams);
        goto done;
    }
    const int64_t *code = codes.buf;
    if (check_codes(s, code, n) != 0) {
        goto done;
    }
    row = PyMem_Malloc(sizeof(double) * (size_t)(s->row_size + s->columns));
    if (row == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *marks = missing.obj == NULL ? NULL : missing.buf;
    if (n * s->n_streams >= RELEASE_GIL_DRIFT) {
        Py_BEGIN_ALLOW_THREADS
        add_increments(s, code, flags.buf, marks, n, row, out.buf);
        Py_END_ALLOW_THREADS
    }
    else {
        add_increments(s, code, flags.buf, marks, n, row, out.buf);
    }
done:
    PyMem_Free(row);
    PyBuffer_Release(&out);
    if (missing.obj != NULL) {
        PyBuffer_Release(&missing);
    }
    PyBuffer_Release(&flags);
    PyBuffer_Release(&codes);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Increments_stream_doc,
"stream(codes, k, out)\n--\n\n"
"Write into `out` (float64, n) stream k's increments of n records given their flat codes\n"
"(int64, n x columns), with no flags and no missing marks: add()'s column k, to the bit,\n"
"without writing the other streams (a crossing's description replays one stream over the\n"
"window). Raises TypeError/ValueError for other inputs.");

static PyObject *
Increments_stream(IncrementsObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "stream() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    const Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer codes, out;
    if (get_buffer(args[0], &codes, "codes", 2, "lq", 8, 0, "int64") != 0) {
        return NULL;
    }
    if (get_buffer(args[2], &out, "out", 1, "d", 8, 1, "float64") != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    const Py_ssize_t n = codes.shape[0];
    if (k < 0 || k >= s->n_streams) {
        PyErr_Format(PyExc_ValueError, "stream %zd is not one of the %zd streams", k,
                     s->n_streams);
    }
    else if (codes.shape[1] != s->columns || out.shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "codes (%zd, %zd) and out (%zd) do not fit %zd records "
                     "of %zd columns", n, codes.shape[1], out.shape[0], n, s->columns);
    }
    else if (check_codes(s, codes.buf, n) == 0) {
        double *row = PyMem_Malloc(sizeof(double) * (size_t)(s->row_size + s->columns));
        if (row == NULL) {
            PyErr_NoMemory();
        }
        else {
            const int64_t *code = codes.buf;
            double *inc = out.buf;
            for (Py_ssize_t i = 0; i < n; i++) {
                fill_row(s, code + i * s->columns, 0.0, 0.0, row);
                inc[i] = stream_increment(s, row, k);
            }
            PyMem_Free(row);
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&codes);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Increments_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Increments_add, METH_FASTCALL, Increments_add_doc},
    {"stream", (PyCFunction)(void (*)(void))Increments_stream, METH_FASTCALL,
     Increments_stream_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Increments_doc,
"Increments(table, utable, ctable, columns, a_stat, b_stat, coef_a, coef_b)\n--\n\n"
"A drift engine's streams, checked and packed: the flat normal, uniform and \"carries a\n"
"value\" tables (float64, columns x stride each) and per stream the two statistics it reads\n"
"(Engine's numbering) and their coefficients. The tables are copied. Immutable; safe to use\n"
"from several threads at once. Raises TypeError for an array of the wrong type and\n"
"ValueError for an index out of range.");

static PyTypeObject IncrementsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeld.core._forest.Increments",
    .tp_basicsize = sizeof(IncrementsObject),
    .tp_dealloc = (destructor)Increments_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Increments_doc,
    .tp_methods = Increments_methods,
    .tp_new = Increments_new,
};

/* ------------------------------------------------------------------ given features */

/* core/features.py's common case: every record a JSON object whose "features" object gives
 * every feature the model reads as a number. In Python that was an itemgetter call per record,
 * a type check per value and numpy's conversion of a list of tuples: 140-220 us for 100
 * records of 20 features, as much as parsing their JSON. Here it is one pass that stops at
 * the first value that is not a finite float or int (a bool is not one: JSON's true is not a
 * number), and the Python paths then take the batch (and name what is wrong). */

PyDoc_STRVAR(given_matrix_doc,
"given_matrix(records, names, out)\n--\n\n"
"Fill `out` (float64, len(records) x len(names)) with records[i][\"features\"][names[j]]\n"
"and return True when `records` is a list of dicts whose \"features\" dict gives every name\n"
"as a finite float or int; return False at the first record or value that does not (`out`\n"
"is then partly written). Raises TypeError/ValueError for other arguments.");

static PyObject *
given_matrix(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    static PyObject *features_key = NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "given_matrix() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (features_key == NULL && (features_key = PyUnicode_InternFromString("features")) == NULL) {
        return NULL;
    }
    PyObject *records = args[0], *names = args[1];
    if (!PyList_Check(records) || !PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "given_matrix() takes a list of records and a tuple "
                        "of names");
        return NULL;
    }
    Py_buffer out;
    if (get_buffer(args[2], &out, "out", 2, "d", 8, 1, "float64") != 0) {
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(records), width = PyTuple_GET_SIZE(names);
    if (out.shape[0] != n || out.shape[1] != width) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd) for %zd records of %zd "
                     "features", out.shape[0], out.shape[1], n, width);
        PyBuffer_Release(&out);
        return NULL;
    }
    double *matrix = out.buf;
    int regular = 1;
    for (Py_ssize_t i = 0; regular && i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *given = PyDict_CheckExact(record)
                              ? PyDict_GetItemWithError(record, features_key) : NULL;
        if (given == NULL || !PyDict_CheckExact(given)) {
            regular = 0;
            break;
        }
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *value = PyDict_GetItemWithError(given, PyTuple_GET_ITEM(names, j));
            double x;
            if (value != NULL && PyFloat_CheckExact(value)) {
                x = PyFloat_AS_DOUBLE(value);
            }
            else if (value != NULL && PyLong_CheckExact(value)) {
                x = PyLong_AsDouble(value);  /* -1.0 and an OverflowError beyond float64 */
                if (x == -1.0 && PyErr_Occurred()) {
                    PyErr_Clear();
                    regular = 0;
                    break;
                }
            }
            else {
                regular = 0;
                break;
            }
            if (!isfinite(x)) {
                regular = 0;
                break;
            }
            matrix[i * width + j] = x;
        }
    }
    PyBuffer_Release(&out);
    if (PyErr_Occurred()) {  /* a name whose hash or comparison raised */
        return NULL;
    }
    return PyBool_FromLong(regular);
}

static PyMethodDef module_methods[] = {
    {"mid_ranks", (PyCFunction)(void (*)(void))mid_ranks, METH_FASTCALL, mid_ranks_doc},
    {"lindley", (PyCFunction)(void (*)(void))lindley, METH_FASTCALL, lindley_doc},
    {"given_matrix", (PyCFunction)(void (*)(void))given_matrix, METH_FASTCALL,
     given_matrix_doc},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ the type and the module */

static PyObject *
Forest_get_n_trees(ForestObject *forest, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(forest->n_trees);
}

static PyObject *
Forest_get_n_features(ForestObject *forest, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(forest->n_features);
}

static PyMethodDef Forest_methods[] = {
    {"path_length_sums", (PyCFunction)(void (*)(void))Forest_path_length_sums, METH_FASTCALL,
     Forest_path_length_sums_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Forest_getset[] = {
    {"n_trees", (getter)Forest_get_n_trees, NULL, "number of trees", NULL},
    {"n_features", (getter)Forest_get_n_features, NULL, "width of the records", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Forest_doc,
"Forest(feature, threshold, left_child, nan_goes_right, leaf_path_length, roots, n_levels,\n"
"       n_features)\n--\n\n"
"An IsolationForest's node arrays (core/forest.py's CompiledIsolationForest fields), checked\n"
"and packed for the walk. Immutable; safe to use from several threads at once. Raises\n"
"TypeError for an array of the wrong type and ValueError for an index out of range.");

static PyTypeObject ForestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modeld.core._forest.Forest",
    .tp_basicsize = sizeof(ForestObject),
    .tp_dealloc = (destructor)Forest_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Forest_doc,
    .tp_methods = Forest_methods,
    .tp_getset = Forest_getset,
    .tp_new = Forest_new,
};

static struct PyModuleDef forest_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "modeld.core._forest",
    .m_doc = "The IsolationForest tree walk, the TreeSHAP table lookups and the drift "
             "detector's ranks and CUSUMs, compiled ahead of time (see core/forest.py, "
             "core/explain.py and core/drift/).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__forest(void)
{
    if (PyType_Ready(&ForestType) < 0 || PyType_Ready(&PatternsType) < 0 ||
        PyType_Ready(&IncrementsType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&forest_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&ForestType);
    if (PyModule_AddObject(module, "Forest", (PyObject *)&ForestType) < 0) {
        Py_DECREF(&ForestType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&PatternsType);
    if (PyModule_AddObject(module, "Patterns", (PyObject *)&PatternsType) < 0) {
        Py_DECREF(&PatternsType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&IncrementsType);
    if (PyModule_AddObject(module, "Increments", (PyObject *)&IncrementsType) < 0) {
        Py_DECREF(&IncrementsType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
