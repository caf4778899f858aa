/*
 * modeld.core._durable: fsync a batch of files and folders at once, without the GIL.
 *
 * core/store.py makes a version's files, its bundle's files and the folders they are renamed
 * into durable at every commit, about twenty paths an import. A journaling filesystem commits
 * fsyncs that arrive together in one journal commit (ext4 here: 14 files 51 ms one after the
 * other, 5 ms at once), so they must run concurrently. From Python that took a thread pool
 * whose threads each take the interpreter lock again after every open, fsync and close: under
 * HTTP load about 80 waits of a switch interval each per import, and each one also takes the
 * lock from a request. Here the whole batch runs on threads of its own, the lock released
 * once for all of it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/* At most this many fsyncs in flight: a batch is a handful of files and folders, and a
 * caller's huge batch must not start a thread per path. */
#define MAX_THREADS 64

typedef struct {
    const char *path;
    int error; /* errno of the first step that failed, 0 when the path is durable */
} Job;

static void *
sync_one(void *arg)
{
    Job *job = (Job *)arg;
    int fd = open(job->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        job->error = errno;
        return NULL;
    }
    if (fsync(fd) != 0) {
        job->error = errno;
    }
    if (close(fd) != 0 && job->error == 0) {
        job->error = errno;
    }
    return NULL;
}

/* Run jobs[0..n) at once, MAX_THREADS at a time; a job whose thread cannot be started runs
 * on the calling thread. Called without the GIL. */
static void
run_jobs(Job *jobs, Py_ssize_t n)
{
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (Py_ssize_t first = 0; first < n; first += MAX_THREADS) {
        Py_ssize_t count = n - first < MAX_THREADS ? n - first : MAX_THREADS;
        for (Py_ssize_t i = 0; i < count; i++) {
            started[i] = pthread_create(&threads[i], NULL, sync_one, &jobs[first + i]) == 0;
            if (!started[i]) {
                sync_one(&jobs[first + i]);
            }
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (started[i]) {
                pthread_join(threads[i], NULL);
            }
        }
    }
}

PyDoc_STRVAR(fsync_all_doc,
"fsync_all(paths, /)\n--\n\n"
"fsync every file and folder of ``paths`` (str, bytes or os.PathLike), all at once, and return\n"
"when all are durable. Raises OSError for the first path, in the given order, that could not\n"
"be opened or fsynced (the others were still tried).");

static PyObject *
fsync_all(PyObject *Py_UNUSED(module), PyObject *paths)
{
    PyObject *seq = PySequence_Fast(paths, "fsync_all: paths must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **encoded = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    Job *jobs = PyMem_Calloc(n ? n : 1, sizeof(Job));
    PyObject *result = NULL;
    if (encoded == NULL || jobs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded[i])) {
            goto done;
        }
        jobs[i].path = PyBytes_AS_STRING(encoded[i]);
    }
    Py_BEGIN_ALLOW_THREADS
    run_jobs(jobs, n);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (jobs[i].error != 0) {
            errno = jobs[i].error;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PySequence_Fast_GET_ITEM(seq, i));
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    if (encoded != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_XDECREF(encoded[i]);
        }
    }
    PyMem_Free(encoded);
    PyMem_Free(jobs);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef module_methods[] = {
    {"fsync_all", fsync_all, METH_O, fsync_all_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "modeld.core._durable",
    .m_doc = "fsync a batch of files and folders at once, without the GIL (core/store.py).",
    .m_size = 0,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__durable(void)
{
    return PyModuleDef_Init(&module);
}
