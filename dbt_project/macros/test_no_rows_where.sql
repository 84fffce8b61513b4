{#- Generic test: no row of the model matches `condition` (the rows it returns are the problem). -#}
{% test no_rows_where(model, condition) %}

select *
from {{ model }}
where {{ condition }}

{% endtest %}
