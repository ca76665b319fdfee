/* SPDX-License-Identifier: MIT */
#pragma once

/* Names shared by mpoold, mpool-client and the tests: the D-Bus contract
 * documented in dbus/org.mpool.Manager.xml. */

#define MPOOL_BUS_NAME            "org.mpool.Manager"
#define MPOOL_MANAGER_PATH        "/org/mpool/Manager"
#define MPOOL_MANAGER_INTERFACE   "org.mpool.Manager"
#define MPOOL_MODELS_PATH         "/org/mpool/Manager/models"
#define MPOOL_MODEL_INTERFACE     "org.mpool.Model"

#define MPOOL_ERROR_MODEL_NOT_FOUND      "org.mpool.Error.ModelNotFound"
#define MPOOL_ERROR_INVALID_MODEL        "org.mpool.Error.InvalidModel"
#define MPOOL_ERROR_INSUFFICIENT_MEMORY  "org.mpool.Error.InsufficientMemory"
#define MPOOL_ERROR_MODEL_PINNED         "org.mpool.Error.ModelPinned"
#define MPOOL_ERROR_CANCELLED            "org.mpool.Error.Cancelled"
#define MPOOL_ERROR_BUSY                 "org.mpool.Error.Busy"
#define MPOOL_ERROR_LIMITS_EXCEEDED      "org.mpool.Error.LimitsExceeded"
#define MPOOL_ERROR_INSUFFICIENT_STORAGE "org.mpool.Error.InsufficientStorage"
#define MPOOL_ERROR_DOWNLOAD_FAILED      "org.mpool.Error.DownloadFailed"
#define MPOOL_ERROR_NOTHING_TO_CANCEL    "org.mpool.Error.NothingToCancel"
#define MPOOL_ERROR_MODEL_EXISTS         "org.mpool.Error.ModelExists"
#define MPOOL_ERROR_NOT_SUPPORTED        "org.mpool.Error.NotSupported"

/* A model name is one or two path segments ("org/name"), each at most this long. */
#define MPOOL_NAME_SEGMENT_MAX 96
#define MPOOL_NAME_MAX (2 * MPOOL_NAME_SEGMENT_MAX + 1)

/* Reasons carried by the ModelUnloaded signal. */
#define MPOOL_REASON_REQUEST          "request"
#define MPOOL_REASON_IDLE             "idle"
#define MPOOL_REASON_MEMORY_LIMIT     "memory-limit"
#define MPOOL_REASON_MEMORY_PRESSURE  "memory-pressure"
#define MPOOL_REASON_SHUTDOWN         "shutdown"
#define MPOOL_REASON_FILES_CHANGED    "files-changed"
#define MPOOL_ERROR_NOT_HELD             "org.mpool.Error.NotHeld"

#define MPOOL_VERSION "0.1.0"
