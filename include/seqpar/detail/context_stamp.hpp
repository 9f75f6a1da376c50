//! @file context_stamp.hpp
//! What a layer's context records of the forward that filled it, and the check backward makes.
#pragma once

#include <seqpar/error.hpp>
#include <seqpar/types.hpp>

#include <cstdint>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The layer fingerprint and element type of the forward that filled a context.
struct context_stamp {
  std::int64_t fingerprint = 0;  //!< the layer's shapes, as fingerprint::value()
  dtype type = dtype::float32;   //!< the forward's element type
  bool filled = false;           //!< false until a forward fills the context

  //! Records a forward of the layer with `print` on elements of `t`.
  void set(std::int64_t print, dtype t) { fingerprint = print, type = t, filled = true; }

  //! Throws unless a forward of the layer with `print` filled the context and its element type is
  //! `t` (that of the backward's dout).
  void check(std::int64_t print, dtype t) const {
    SEQPAR_EXPECTS(filled, "saved: an empty context; expected the context a forward of this layer returned");
    SEQPAR_EXPECTS(fingerprint == print,
                   "saved: a context of a layer with other shapes; expected one a forward of this layer returned");
    SEQPAR_EXPECTS(t == type, "dout: element type " << to_string(t) << "; expected the forward's " << to_string(type));
  }
};

}  // namespace detail
SEQPAR_NAMESPACE_END
