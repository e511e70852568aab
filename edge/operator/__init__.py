"""The operator page: a live view of the line on the edge box, and feedback that feeds the refresh."""
