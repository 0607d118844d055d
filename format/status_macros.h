// Small status-propagation macros (Debian's abseil 20220623 ships none).
#ifndef UQ_FORMAT_STATUS_MACROS_H_
#define UQ_FORMAT_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define UQ_CONCAT_INNER_(a, b) a##b
#define UQ_CONCAT_(a, b) UQ_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define UQ_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status uq_status_ = (expr);      \
    if (!uq_status_.ok()) return uq_status_; \
  } while (0)

// `UQ_ASSIGN_OR_RETURN(auto x, Foo());` — declares/assigns from a StatusOr or
// returns its status.
#define UQ_ASSIGN_OR_RETURN(lhs, expr) \
  UQ_ASSIGN_OR_RETURN_IMPL_(UQ_CONCAT_(uq_statusor_, __LINE__), lhs, expr)
#define UQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

// Coroutine flavours (co_return instead of return).
#define UQ_CO_RETURN_IF_ERROR(expr)             \
  do {                                          \
    ::absl::Status uq_status_ = (expr);         \
    if (!uq_status_.ok()) co_return uq_status_; \
  } while (0)
#define UQ_CO_ASSIGN_OR_RETURN(lhs, expr) \
  UQ_CO_ASSIGN_OR_RETURN_IMPL_(UQ_CONCAT_(uq_statusor_, __LINE__), lhs, expr)
#define UQ_CO_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) co_return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

#endif  // UQ_FORMAT_STATUS_MACROS_H_
