"""Click commands; each module holds the commands of one area and imports heavy code inside them."""
