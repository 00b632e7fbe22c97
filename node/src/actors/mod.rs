//! Actor infrastructure shared by the node's actors.
